package main

import (
	"bytes"
	"context"
	"encoding/json"
	"path/filepath"
	"strings"
	"testing"

	"github.com/pgporter/pgporter/mover"
	"github.com/stretchr/testify/require"
)

// runMoverCLI runs pgporter with args and returns the exit code, stdout and stderr.
func runMoverCLI(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	var stdout, stderr bytes.Buffer
	code := run(context.Background(), args, &stdout, &stderr)
	return code, stdout.String(), stderr.String()
}

func lastOutLine(s string) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	return lines[len(lines)-1]
}

func TestMoverIdentityCLI(t *testing.T) {
	home := filepath.Join(t.TempDir(), "home")

	code, _, stderr := runMoverCLI(t, "mover", "id", "--home", home)
	require.Equal(t, exitNotFound, code)
	require.Contains(t, stderr, "pgporter mover init --home "+home)

	code, stdout, stderr := runMoverCLI(t, "mover", "init", "--home", home)
	require.Equal(t, exitOK, code, stderr)
	self, err := mover.ParsePeerID(lastOutLine(stdout))
	require.NoError(t, err, "the peer ID is the last line of stdout")
	require.Contains(t, stderr, "created identity in "+filepath.Join(home, "identity"))

	code, stdout, stderr = runMoverCLI(t, "mover", "init", "--home", home)
	require.Equal(t, exitOK, code, stderr)
	require.Equal(t, self.String(), lastOutLine(stdout))
	require.Contains(t, stderr, "identity exists; not replaced")

	code, stdout, _ = runMoverCLI(t, "mover", "init", "--home", home, "--json")
	require.Equal(t, exitOK, code)
	var initOut struct {
		PeerID  string `json:"peer_id"`
		Created bool   `json:"created"`
	}
	require.NoError(t, json.Unmarshal([]byte(lastOutLine(stdout)), &initOut))
	require.Equal(t, self.String(), initOut.PeerID)
	require.False(t, initOut.Created)

	code, stdout, _ = runMoverCLI(t, "mover", "id", "--home", home)
	require.Equal(t, exitOK, code)
	require.Equal(t, self.String()+"\n", stdout)
}

func TestMoverTrustCLI(t *testing.T) {
	home := t.TempDir()
	code, stdout, _ := runMoverCLI(t, "mover", "init", "--home", home)
	require.Equal(t, exitOK, code)
	self := lastOutLine(stdout)

	var peer mover.PeerID
	peer[0] = 42
	typo := []byte(peer.String())
	typo[3] = map[bool]byte{true: 'B', false: 'A'}[typo[3] == 'A']

	for _, tc := range []struct {
		name string
		args []string
		msg  string
	}{
		{"typo in ID", []string{string(typo), "--allow", "send"}, "check character mismatch: typo?"},
		{"not an ID", []string{"hello", "--allow", "send"}, "invalid peer ID"},
		{"no --allow", []string{peer.String()}, "--allow is required"},
		{"bad permission", []string{peer.String(), "--allow", "send,write"}, `unknown permission "write"`},
		{"no ID", []string{"--allow", "send"}, "trust takes one PEER_ID"},
		{"bad name", []string{peer.String(), "--allow", "send", "--name", "a\x1b[31m"}, "--name"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, stdout, stderr := runMoverCLI(t, append([]string{"mover", "trust", "--home", home}, tc.args...)...)
			require.Equal(t, exitUsage, code, stderr)
			require.Empty(t, stdout)
			require.Contains(t, stderr, tc.msg)
		})
	}

	code, stdout, stderr := runMoverCLI(t, "mover", "trust", "--home", home, strings.ToLower(peer.String()), "--allow", "send", "--name", "target-1")
	require.Equal(t, exitOK, code, stderr)
	require.Contains(t, stdout, "trusted "+peer.String()+" (target-1): allow send")

	// Replacing permissions says what they were.
	code, stdout, stderr = runMoverCLI(t, "mover", "trust", "--home", home, peer.String(), "--allow", "read,send", "--json")
	require.Equal(t, exitOK, code, stderr)
	require.Contains(t, stderr, "allow send,read (was send)", "with --json, the human line goes to stderr")
	require.NotContains(t, stdout, "allow send,read (was send)")
	var trustOut struct {
		PeerID  string   `json:"peer_id"`
		Name    string   `json:"name"`
		Allow   []string `json:"allow"`
		Updated bool     `json:"updated"`
	}
	require.NoError(t, json.Unmarshal([]byte(lastOutLine(stdout)), &trustOut))
	require.Equal(t, peer.String(), trustOut.PeerID)
	require.Equal(t, "target-1", trustOut.Name)
	require.Equal(t, []string{"send", "read"}, trustOut.Allow)
	require.True(t, trustOut.Updated)

	// Trusting ourselves is allowed (loopback).
	code, stdout, stderr = runMoverCLI(t, "mover", "trust", "--home", home, self, "--allow", "send,read,orchestrate")
	require.Equal(t, exitOK, code, stderr)
	require.Contains(t, stdout, "own identity")

	// Regression (issue 19): --json printed the table before the object.
	code, stdout, stderr = runMoverCLI(t, "mover", "peers", "--home", home, "--json")
	require.Equal(t, exitOK, code, stderr)
	require.NotContains(t, stdout, "PEER ID")
	require.True(t, json.Valid([]byte(stdout)), "stdout is one JSON object: %q", stdout)
	var peersOut struct {
		Peers []struct {
			PeerID string   `json:"peer_id"`
			Name   string   `json:"name"`
			Allow  []string `json:"allow"`
			Added  string   `json:"added"`
			Self   bool     `json:"self"`
		} `json:"peers"`
	}
	require.NoError(t, json.Unmarshal([]byte(lastOutLine(stdout)), &peersOut))
	require.Len(t, peersOut.Peers, 2)
	bySelf := map[bool]string{}
	for _, p := range peersOut.Peers {
		require.NotEmpty(t, p.Added)
		bySelf[p.Self] = p.PeerID
	}
	require.Equal(t, self, bySelf[true])
	require.Equal(t, peer.String(), bySelf[false])

	code, stdout, stderr = runMoverCLI(t, "mover", "untrust", "--home", home, peer.String())
	require.Equal(t, exitOK, code, stderr)
	require.Contains(t, stdout, "untrusted "+peer.String()+" (target-1)")

	code, _, stderr = runMoverCLI(t, "mover", "untrust", "--home", home, peer.String())
	require.Equal(t, exitNotFound, code)
	require.Contains(t, stderr, "not in the trust list")

	code, _, stderr = runMoverCLI(t, "mover", "untrust", "--home", home, string(typo))
	require.Equal(t, exitUsage, code)
	require.Contains(t, stderr, "typo?")

	code, stdout, _ = runMoverCLI(t, "mover", "peers", "--home", home, "--json")
	require.Equal(t, exitOK, code)
	require.NoError(t, json.Unmarshal([]byte(lastOutLine(stdout)), &peersOut))
	require.Len(t, peersOut.Peers, 1)
}

func TestMoverPeersEmpty(t *testing.T) {
	home := t.TempDir()
	code, stdout, stderr := runMoverCLI(t, "mover", "peers", "--home", home, "--json")
	require.Equal(t, exitOK, code)
	require.Equal(t, `{"peers":[]}`+"\n", stdout)
	require.Contains(t, stderr, "no trusted peers")
}
