package main

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/pgporter/pgporter/mover"
	"github.com/stretchr/testify/require"
	"github.com/zeebo/blake3"
)

// writeDump writes a one-file tree with its manifest, as a receiver commits it.
func writeDump(t *testing.T, dir string, content string) {
	t.Helper()
	require.NoError(t, os.MkdirAll(dir, 0o755))
	require.NoError(t, os.WriteFile(filepath.Join(dir, "toc.dat"), []byte(content), 0o644))
	man := mover.Manifest{Format: mover.ManifestFormat, Transfer: "t-x", Files: []mover.ManifestFile{{Path: "toc.dat", Size: int64(len(content)), Mode: 0o644, BLAKE3: mover.Hash(blake3.Sum256([]byte(content)))}}, Bytes: int64(len(content))}
	b, err := json.Marshal(man)
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(filepath.Join(dir, mover.ManifestName), b, 0o644))
}

// TestVerifyExpect guards against issue 15's "verify cannot be given an
// expected manifest hash": whoever can alter a dump can rewrite its
// manifest to match, and plain verify then passes. --expect HASH (the hash
// the target reported at commit) catches it.
func TestVerifyExpect(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "dump")
	writeDump(t, dir, "the real dump")
	want, err := mover.ManifestHash(dir)
	require.NoError(t, err)
	verify := func(args ...string) (int, string, string) {
		var stdout, stderr bytes.Buffer
		code := run(context.Background(), append([]string{"verify"}, args...), &stdout, &stderr)
		return code, stdout.String(), stderr.String()
	}

	code, out, _ := verify("--expect", want.String(), dir)
	require.Equal(t, 0, code)
	require.Contains(t, out, want.String())

	// Files and manifest both rewritten: consistent, but not what was sent.
	writeDump(t, dir, "a forged dump!")
	code, _, _ = verify(dir)
	require.Equal(t, 0, code, "without --expect the forgery verifies")
	code, _, errOut := verify("--expect", want.String(), dir)
	require.Equal(t, 1, code)
	require.Contains(t, errOut, "not the tree that was sent")
	require.Contains(t, errOut, want.String())
	code, out, _ = verify("--json", "--expect", want.String(), dir)
	require.Equal(t, 1, code)
	require.Contains(t, out, `"ok":false`)

	code, _, errOut = verify("--expect", strings.Repeat("z", 64), dir)
	require.Equal(t, 2, code, "a malformed hash is a usage error")
	require.Contains(t, errOut, "--expect")
}
