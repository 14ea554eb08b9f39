package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/pgporter/pgporter/chunkstore/chunk"
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
	require.Equal(t, exitVerification, code)
	require.Contains(t, errOut, "not the tree that was sent")
	require.Contains(t, errOut, want.String())
	code, out, _ = verify("--json", "--expect", want.String(), dir)
	require.Equal(t, exitVerification, code)
	require.Contains(t, out, `"ok":false`)

	code, _, errOut = verify("--expect", strings.Repeat("z", 64), dir)
	require.Equal(t, 2, code, "a malformed hash is a usage error")
	require.Contains(t, errOut, "--expect")
}

// writeDump2 writes a one-file tree with a format 2 manifest (chunk-list
// hash), as a protocol 3 receiver commits it.
func writeDump2(t *testing.T, dir string, content []byte) {
	t.Helper()
	require.NoError(t, os.MkdirAll(dir, 0o755))
	require.NoError(t, os.WriteFile(filepath.Join(dir, "3001.dat"), content, 0o644))
	p := chunk.Params{Algorithm: chunk.AlgorithmGearV1, Min: 4 << 10, Avg: 16 << 10, Max: 64 << 10}
	l := chunk.NewFileListHash(uint64(len(content)))
	n := 0
	require.NoError(t, chunk.Split(content, p, func(c chunk.Chunk) error {
		l.Add(chunk.Sum(c.Data), uint32(len(c.Data)))
		n++
		return nil
	}))
	require.Greater(t, n, 4, "the file must be several chunks")
	man := mover.Manifest{Format: mover.ManifestFormat2, Transfer: "t-x", Chunking: p, Files: []mover.ManifestFile{{Path: "3001.dat", Size: int64(len(content)), Mode: 0o644, ChunksBLAKE3: l.Sum()}}, Bytes: int64(len(content))}
	b, err := json.Marshal(man)
	require.NoError(t, err)
	require.NotContains(t, string(b), `"blake3"`, "format 2 gives no hash b3sum could be fed")
	require.NoError(t, os.WriteFile(filepath.Join(dir, mover.ManifestName), b, 0o644))
}

// TestVerifyFormat2 guards issue 16's manifest format 2: verify cuts each
// file again with the manifest's chunking parameters and finds a changed
// byte through the chunk-list hash; --b3sum prints the files' plain BLAKE3
// in b3sum's format; format 1 still verifies (TestVerifyExpect).
func TestVerifyFormat2(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "dump")
	content := make([]byte, 300<<10)
	for i := range content {
		content[i] = byte(i*7 + i/1000)
	}
	writeDump2(t, dir, content)
	verify := func(args ...string) (int, string, string) {
		var stdout, stderr bytes.Buffer
		code := run(context.Background(), append([]string{"verify"}, args...), &stdout, &stderr)
		return code, stdout.String(), stderr.String()
	}

	code, out, errOut := verify(dir)
	require.Equal(t, 0, code, errOut)
	require.Contains(t, out, ": ok, 1 files")

	code, out, errOut = verify("--b3sum", dir)
	require.Equal(t, 0, code, errOut)
	require.Equal(t, fmt.Sprintf("%x  3001.dat\n", blake3.Sum256(content)), out, "stdout holds b3sum lines only")
	require.Contains(t, errOut, ": ok, 1 files")

	// One byte changed in the middle of a chunk: same size, same cuts
	// most likely, another chunk ID.
	content[150<<10] ^= 1
	require.NoError(t, os.WriteFile(filepath.Join(dir, "3001.dat"), content, 0o644))
	code, out, errOut = verify("--b3sum", dir)
	require.Equal(t, exitVerification, code)
	require.Empty(t, out, "no b3sum line for a file that does not verify")
	require.Contains(t, errOut, "3001.dat: content differs from the manifest (chunk list BLAKE3")

	code, _, errOut = verify("--b3sum", "--json", dir)
	require.Equal(t, 2, code, "--b3sum and --json both want stdout")
	require.Contains(t, errOut, "--b3sum")
}
