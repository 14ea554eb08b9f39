package orchestrator

import (
	"context"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/pgporter/pgporter/chunkstore"
	"github.com/pgporter/pgporter/chunkstore/storetest"
	"github.com/pgporter/pgporter/internal/synth"
	"github.com/pgporter/pgporter/internal/testsupport"
)

// TestLocalSourceConformance: the local repository, opened as a Source,
// passes the reader part of the store conformance suite, as a repository
// mover does (mover's TestRemoteRepoConformance); two restore points, the
// second after a change, so that "latest" has a choice to make.
func TestLocalSourceConformance(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "repo")
	pgdata := t.TempDir()
	files := map[string][]byte{
		"PG_VERSION":        []byte("15\n"),
		"global/pg_control": synth.Random(1, 8192),
		"base/1/16384":      synth.Random(2, 3<<20+17),
		"base/1/16385":      synth.PgbenchRows(2 << 20),
		"base/1/16386":      {},
	}
	write := func() { testsupport.WriteFiles(t, pgdata, files, 0o600) }
	want := storetest.Want{Trees: map[string][]chunkstore.Node{}, Files: files}
	repo, err := chunkstore.OpenRepo(context.Background(), dir, nil)
	require.NoError(t, err)
	for round := range 2 {
		if round == 1 {
			files["base/1/16384"] = synth.Random(3, 1<<20)
		}
		write()
		rp, err := repo.Backup(t.Context(), pgdata, chunkstore.BackupOptions{SourceHost: "db1"})
		require.NoError(t, err)
		want.Points = append(want.Points, *rp)
		want.Trees[rp.ID], err = repo.Tree(t.Context(), rp)
		require.NoError(t, err)
	}
	require.NoError(t, repo.Close())

	src, err := OpenSource(t.Context(), SourceOptions{Repo: dir})
	require.NoError(t, err)
	defer src.Close()
	storetest.RunReader(t, src, want)

	// A second reader, and a backup, share the repository with the first.
	second, err := OpenSource(t.Context(), SourceOptions{Repo: dir})
	require.NoError(t, err)
	defer second.Close()
	writer, err := chunkstore.OpenRepo(context.Background(), dir, nil)
	require.NoError(t, err)
	files["base/1/16385"] = synth.Random(4, 1<<20)
	write()
	rp, err := writer.Backup(t.Context(), pgdata, chunkstore.BackupOptions{SourceHost: "db1"})
	require.NoError(t, err)
	require.NoError(t, writer.Close())
	got, err := second.Resolve(t.Context(), rp.ID)
	require.NoError(t, err)
	nodes, err := second.Tree(t.Context(), got)
	require.NoError(t, err)
	want.Points = append(want.Points, *rp)
	want.Trees[rp.ID] = nodes
	storetest.RunReader(t, second, want)
}

// Reading never creates a repository.
func TestOpenSourceCreatesNothing(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "no-repo")
	_, err := OpenSource(t.Context(), SourceOptions{Repo: dir})
	require.Error(t, err)
	require.NoDirExists(t, dir)
}
