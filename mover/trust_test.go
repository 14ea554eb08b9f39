package mover

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/pgporter/pgporter/protocol"
	"github.com/stretchr/testify/require"
)

func TestParsePerms(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want Perm
		err  string
	}{
		{in: "send", want: PermSend},
		{in: "send,read", want: PermSend | PermRead},
		{in: " Read , ORCHESTRATE ", want: PermRead | PermOrchestrate},
		{in: "send,read,orchestrate,send", want: PermSend | PermRead | PermOrchestrate},
		{in: "archive", want: PermArchive},
		{in: "send,read,orchestrate,archive,send", want: PermAll},
		{in: "", err: "no permission given"},
		{in: ",", err: "no permission given"},
		{in: "send,write", err: `unknown permission "write"`},
	} {
		t.Run(tc.in, func(t *testing.T) {
			got, err := ParsePerms(tc.in)
			if tc.err != "" {
				require.ErrorContains(t, err, tc.err)
				return
			}
			require.NoError(t, err)
			require.Equal(t, tc.want, got)
			back, err := ParsePerms(got.String())
			require.NoError(t, err)
			require.Equal(t, got, back)
		})
	}
	require.Equal(t, "none", Perm(0).String())
	require.Equal(t, "send,read,orchestrate,archive", PermAll.String())
}

func TestTrustRoundTrip(t *testing.T) {
	home := t.TempDir()
	ts, err := OpenTrust(home)
	require.NoError(t, err)
	require.Empty(t, ts.List())

	a, b := randomPeerID(t), randomPeerID(t)
	require.NoError(t, ts.Trust(TrustedPeer{ID: a, Name: "target", Perms: PermSend}))
	require.NoError(t, ts.Trust(TrustedPeer{ID: b, Name: "repo", Perms: PermRead | PermOrchestrate}))

	p, ok := ts.Lookup(a)
	require.True(t, ok)
	require.Equal(t, "target", p.Name)
	require.Equal(t, PermSend, p.Perms)
	require.WithinDuration(t, time.Now(), p.Added, 2*time.Second)

	// Another process (or a restart) reads the same list.
	other, err := OpenTrust(home)
	require.NoError(t, err)
	require.Equal(t, ts.List(), other.List())
	require.Equal(t, []string{"repo", "target"}, []string{other.List()[0].Name, other.List()[1].Name})

	// Updating replaces the permissions and keeps name and date.
	require.NoError(t, ts.Trust(TrustedPeer{ID: a, Perms: PermRead}))
	p2, ok := ts.Lookup(a)
	require.True(t, ok)
	require.Equal(t, PermRead, p2.Perms, "permissions are replaced, not merged")
	require.Equal(t, "target", p2.Name)
	require.Equal(t, p.Added, p2.Added)

	require.NoError(t, ts.Untrust(a))
	_, ok = ts.Lookup(a)
	require.False(t, ok)
	require.ErrorIs(t, ts.Untrust(a), ErrUnknownPeer)
	require.Len(t, other.List(), 1, "the other store sees the removal")

	// The file is meant for people: indented JSON with names, not bits.
	data, err := os.ReadFile(filepath.Join(home, "trust.json"))
	require.NoError(t, err)
	require.Contains(t, string(data), `"allow": [`)
	require.Contains(t, string(data), b.String())
	fi, err := os.Stat(filepath.Join(home, "trust.json"))
	require.NoError(t, err)
	require.Equal(t, os.FileMode(0o600), fi.Mode().Perm())
}

func TestTrustConcurrent(t *testing.T) {
	home := t.TempDir()
	// Two stores on one home stand for two processes; the lock file keeps
	// their read-modify-write cycles from losing each other's updates.
	stores := make([]*TrustStore, 2)
	for i := range stores {
		var err error
		stores[i], err = OpenTrust(home)
		require.NoError(t, err)
	}
	const n = 40
	ids := make([]PeerID, n)
	for i := range ids {
		ids[i] = randomPeerID(t)
	}
	var wg sync.WaitGroup
	errs := make([]error, n)
	for i := range n {
		wg.Go(func() {
			ts := stores[i%len(stores)]
			errs[i] = ts.Trust(TrustedPeer{ID: ids[i], Name: fmt.Sprintf("peer-%02d", i), Perms: PermSend})
			ts.Lookup(ids[(i+1)%n])
			ts.List()
		})
	}
	wg.Wait()
	for _, err := range errs {
		require.NoError(t, err)
	}
	for _, ts := range stores {
		require.Len(t, ts.List(), n)
		for _, id := range ids {
			_, ok := ts.Lookup(id)
			require.True(t, ok)
		}
	}
}

func TestTrustReloadsExternalWrite(t *testing.T) {
	home := t.TempDir()
	daemon, err := OpenTrust(home)
	require.NoError(t, err)
	id := randomPeerID(t)
	_, ok := daemon.Lookup(id)
	require.False(t, ok)

	// An operator runs 'pgporter mover trust' while the daemon runs.
	cli, err := OpenTrust(home)
	require.NoError(t, err)
	require.NoError(t, cli.Trust(TrustedPeer{ID: id, Perms: PermSend}))
	_, ok = daemon.Lookup(id)
	require.True(t, ok, "a running daemon follows the file")

	// A hand edit in place (same inode) is seen as well.
	path := filepath.Join(home, "trust.json")
	var tf map[string]any
	data, err := os.ReadFile(path)
	require.NoError(t, err)
	require.NoError(t, json.Unmarshal(data, &tf))
	tf["peers"].([]any)[0].(map[string]any)["allow"] = []string{"send", "read"}
	data, err = json.MarshalIndent(tf, "", "  ")
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(path, data, 0o600))
	require.NoError(t, daemon.Check(id, PermRead))

	// A broken file fails closed and says why.
	require.NoError(t, os.WriteFile(path, []byte("{not json"), 0o600))
	_, ok = daemon.Lookup(id)
	require.False(t, ok)
	require.Error(t, daemon.Err())
	err = daemon.Check(id, PermSend)
	require.ErrorIs(t, err, ErrPermission)
	require.ErrorContains(t, err, "trust.json")
	require.Error(t, cli.Trust(TrustedPeer{ID: randomPeerID(t), Perms: PermSend}), "a list that cannot be read is not overwritten")
	_, err = OpenTrust(home)
	require.Error(t, err)

	// A deleted file is an empty list.
	require.NoError(t, os.Remove(path))
	require.Empty(t, daemon.List())
	require.NoError(t, daemon.Err())
}

func TestTrustCheck(t *testing.T) {
	home := t.TempDir()
	ts, err := OpenTrust(home)
	require.NoError(t, err)
	id := randomPeerID(t)
	require.NoError(t, ts.Trust(TrustedPeer{ID: id, Name: "staging", Perms: PermRead}))

	require.NoError(t, ts.Check(id, PermRead))
	require.NoError(t, ts.Check(id, 0))

	err = ts.Check(id, PermSend)
	require.ErrorIs(t, err, ErrPermission)
	require.ErrorIs(t, err, protocol.ErrPermission, "reported to the peer with the permission code")
	var pe *PermissionError
	require.ErrorAs(t, err, &pe)
	require.Equal(t, PermSend, pe.Missing)
	require.ErrorContains(t, err, "lacks permission send")
	// The grant command keeps what the peer has: trust replaces permissions.
	require.ErrorContains(t, err, "pgporter mover trust "+id.String()+" --allow send,read --home "+home)

	stranger := randomPeerID(t)
	err = ts.Check(stranger, PermOrchestrate)
	require.ErrorIs(t, err, ErrPermission)
	require.ErrorContains(t, err, "not in the trust list")
	require.ErrorContains(t, err, "pgporter mover trust "+stranger.String()+" --allow orchestrate")
}

func TestTrustRejectsBadInput(t *testing.T) {
	ts, err := OpenTrust(t.TempDir())
	require.NoError(t, err)
	require.Error(t, ts.Trust(TrustedPeer{Perms: PermSend}), "zero ID")
	require.Error(t, ts.Trust(TrustedPeer{ID: randomPeerID(t), Perms: 0x80}))
	require.Error(t, ts.Trust(TrustedPeer{ID: randomPeerID(t), Name: "a\nb", Perms: PermSend}))
	require.Empty(t, ts.List())
}
