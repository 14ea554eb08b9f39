package pebbledb

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"github.com/stretchr/testify/require"

	"github.com/pgporter/pgporter/internal/testsupport"
)

func TestFormatRecordedAndRefused(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "db")
	db, err := Open(dir, Options{Format: "test-1"})
	require.NoError(t, err)
	require.NoError(t, db.Set([]byte("k/1"), []byte("v"), pebble.Sync))
	require.NoError(t, db.Close())

	db, err = Open(dir, Options{Format: "test-1"})
	require.NoError(t, err)
	require.NoError(t, db.Close())

	_, err = Open(dir, Options{Format: "test-2"})
	require.ErrorIs(t, err, ErrFormat)
	require.ErrorContains(t, err, `"test-1", this build reads "test-2"`)

	// Refused, it stays as it was: the right build still opens it, data and all.
	db, err = Open(dir, Options{Format: "test-1"})
	require.NoError(t, err)
	v, closer, err := db.Get([]byte("k/1"))
	require.NoError(t, err)
	require.Equal(t, "v", string(v))
	require.NoError(t, closer.Close())
	require.NoError(t, db.Close())
}

// A database from a build before the format record gets one.
func TestFormatAddedToOlderStore(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "db")
	old, err := pebble.Open(dir, &pebble.Options{})
	require.NoError(t, err)
	require.NoError(t, old.Set([]byte("s/x"), []byte("1"), pebble.Sync))
	require.NoError(t, old.Close())

	db, err := Open(dir, Options{Format: "test-1"})
	require.NoError(t, err)
	v, closer, err := db.Get(FormatKey)
	require.NoError(t, err)
	require.Equal(t, "test-1", string(v))
	require.NoError(t, closer.Close())
	require.NoError(t, db.Close())
}

const holdEnv = "PGPORTER_TEST_PEBBLEDB_HOLD"

// TestHoldChild is the child of TestLockedNamesHolder: it opens the
// database in $PGPORTER_TEST_PEBBLEDB_HOLD, says so, and keeps it open until
// it is killed.
func TestHoldChild(t *testing.T) {
	dir := os.Getenv(holdEnv)
	if dir == "" {
		return
	}
	db, err := Open(dir, Options{Format: "test-1"})
	if err != nil {
		fmt.Println("error:", err)
		return
	}
	defer db.Close()
	fmt.Println("open")
	select {}
}

func TestLockedNamesHolder(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "db")
	c := testsupport.StartChild(t, "TestHoldChild", holdEnv+"="+dir)
	require.Equal(t, "open", c.Line(t, time.Minute))

	_, err := Open(dir, Options{Format: "test-1"})
	require.ErrorIs(t, err, ErrLocked)
	var le *LockedError
	require.True(t, errors.As(err, &le), "%v", err)
	require.Equal(t, c.Cmd.Process.Pid, le.PID)
	require.Equal(t, dir+" is in use by another pgporter process (PID "+strconv.Itoa(c.Cmd.Process.Pid)+")", err.Error())
}

// A second open in the same process is refused the same way, and the
// database opens again once the first is closed.
func TestLockedInProcess(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "db")
	db, err := Open(dir, Options{Format: "test-1"})
	require.NoError(t, err)
	_, err = Open(dir, Options{Format: "test-1"})
	require.ErrorIs(t, err, ErrLocked)
	require.ErrorContains(t, err, "already open in this process")
	require.NoError(t, db.Close())
	db, err = Open(dir, Options{Format: "test-1"})
	require.NoError(t, err)
	require.NoError(t, db.Close())
}

// Read-only, an open changes no file of the database, and a missing one is
// an error rather than made.
func TestReadOnlyWritesNothing(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "db")
	_, err := Open(dir, Options{Format: "test-1", ReadOnly: true})
	require.Error(t, err)
	require.NoDirExists(t, dir)

	// An older store, without a format record, with a write in its log.
	old, err := pebble.Open(dir, &pebble.Options{})
	require.NoError(t, err)
	require.NoError(t, old.Set([]byte("s/x"), []byte("1"), pebble.Sync))
	require.NoError(t, old.Close())
	before := dirState(t, dir)

	db, err := Open(dir, Options{Format: "test-1", ReadOnly: true})
	require.NoError(t, err)
	v, closer, err := db.Get([]byte("s/x"))
	require.NoError(t, err)
	require.Equal(t, "1", string(v))
	require.NoError(t, closer.Close())
	require.NoError(t, db.Close())
	require.Equal(t, before, dirState(t, dir))

	// A store of another format is refused read-only too.
	db, err = Open(dir, Options{Format: "test-2"})
	require.NoError(t, err)
	require.NoError(t, db.Close())
	_, err = Open(dir, Options{Format: "test-1", ReadOnly: true})
	require.ErrorIs(t, err, ErrFormat)
}

// dirState lists the files of dir with their sizes and modification times,
// LOCK aside (taken read-only too).
func dirState(t *testing.T, dir string) map[string]string {
	t.Helper()
	entries, err := os.ReadDir(dir)
	require.NoError(t, err)
	m := map[string]string{}
	for _, e := range entries {
		if e.Name() == "LOCK" {
			continue
		}
		fi, err := e.Info()
		require.NoError(t, err)
		m[e.Name()] = fmt.Sprintf("%d %d", fi.Size(), fi.ModTime().UnixNano())
	}
	return m
}
