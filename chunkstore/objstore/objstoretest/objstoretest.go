// Package objstoretest is the conformance suite of objstore.Backend, run
// against every implementation (restic's backend test suite is the model).
package objstoretest

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/pgporter/pgporter/chunkstore/objstore"
)

// Config describes the backend under test.
type Config struct {
	// New returns an empty backend of its own for one test.
	New func(t *testing.T) objstore.Backend
	// PartSize is the size above which the backend splits an upload (S3's
	// multipart part size); the suite writes objects across it. 0 for a
	// backend that does not split (it then uses 5 MiB anyway).
	PartSize int64
	// PageSize is the backend's listing page; the suite lists more objects
	// than three pages hold. 0 for a backend without pages.
	PageSize int
}

// Run runs the suite.
func Run(t *testing.T, c Config) {
	if c.PartSize == 0 {
		c.PartSize = 5 << 20
	}
	if c.PageSize == 0 {
		c.PageSize = 4
	}
	t.Run("PutGet", func(t *testing.T) { testPutGet(t, c) })
	t.Run("Empty", func(t *testing.T) { testEmpty(t, c) })
	t.Run("Multipart", func(t *testing.T) { testMultipart(t, c) })
	t.Run("PutIfAbsentTwice", func(t *testing.T) { testPutTwice(t, c) })
	t.Run("PutShortReader", func(t *testing.T) { testPutShort(t, c) })
	t.Run("PutRace", func(t *testing.T) { testPutRace(t, c, 1<<10, 8) })
	t.Run("PutRaceMultipart", func(t *testing.T) { testPutRace(t, c, c.PartSize+1<<20, 2) })
	t.Run("ListPages", func(t *testing.T) { testList(t, c) })
	t.Run("Delete", func(t *testing.T) { testDelete(t, c) })
	t.Run("HostileNames", func(t *testing.T) { testHostile(t, c) })
	t.Run("Cancelled", func(t *testing.T) { testCancelled(t, c) })
}

func random(n int64) []byte {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return b
}

func put(t *testing.T, b objstore.Backend, name string, data []byte) {
	t.Helper()
	require.NoError(t, b.PutIfAbsent(t.Context(), name, bytes.NewReader(data), int64(len(data))))
}

func testPutGet(t *testing.T, c Config) {
	b, ctx := c.New(t), t.Context()
	data := random(100 << 10)
	put(t, b, "packs/ab/0001.pack", data)

	got, err := b.Get(ctx, "packs/ab/0001.pack", []byte("keep"))
	require.NoError(t, err)
	require.Equal(t, "keep", string(got[:4]), "Get must append to dst")
	require.True(t, bytes.Equal(data, got[4:]))

	size, err := b.Stat(ctx, "packs/ab/0001.pack")
	require.NoError(t, err)
	require.Equal(t, int64(len(data)), size)

	for _, r := range [][2]int64{{0, 1}, {17, 4096}, {int64(len(data)) - 10, 10}, {0, int64(len(data))}, {500, 0}} {
		got, err := b.GetRange(ctx, "packs/ab/0001.pack", r[0], r[1], nil)
		require.NoError(t, err, "range %v", r)
		require.True(t, bytes.Equal(data[r[0]:r[0]+r[1]], got), "range %v", r)
	}
	for _, r := range [][2]int64{{int64(len(data)) - 10, 11}, {int64(len(data)) + 1, 1}, {-1, 5}} {
		_, err := b.GetRange(ctx, "packs/ab/0001.pack", r[0], r[1], nil)
		require.ErrorIs(t, err, objstore.ErrRange, "range %v", r)
	}
	_, err = b.Get(ctx, "packs/ab/0002.pack", nil)
	require.ErrorIs(t, err, objstore.ErrNotFound)
	_, err = b.Stat(ctx, "packs/ab")
	require.ErrorIs(t, err, objstore.ErrNotFound, "a name's leading part is no object")
}

func testEmpty(t *testing.T, c Config) {
	b, ctx := c.New(t), t.Context()
	put(t, b, "empty", nil)
	got, err := b.Get(ctx, "empty", nil)
	require.NoError(t, err)
	require.Empty(t, got)
	size, err := b.Stat(ctx, "empty")
	require.NoError(t, err)
	require.Zero(t, size)
}

// An object larger than a part, read across the parts' boundaries.
func testMultipart(t *testing.T, c Config) {
	b, ctx := c.New(t), t.Context()
	data := random(2*c.PartSize + 1<<20)
	put(t, b, "big", data)
	size, err := b.Stat(ctx, "big")
	require.NoError(t, err)
	require.Equal(t, int64(len(data)), size)
	for _, r := range [][2]int64{{c.PartSize - 1000, 3000}, {c.PartSize - 1, 2}, {2*c.PartSize - 7, 1 << 20}, {c.PartSize, c.PartSize}} {
		got, err := b.GetRange(ctx, "big", r[0], r[1], nil)
		require.NoError(t, err, "range %v", r)
		require.True(t, bytes.Equal(data[r[0]:r[0]+r[1]], got), "range %v differs", r)
	}
	got, err := b.Get(ctx, "big", nil)
	require.NoError(t, err)
	require.True(t, bytes.Equal(data, got))
}

func testPutTwice(t *testing.T, c Config) {
	b, ctx := c.New(t), t.Context()
	for _, size := range []int64{1000, c.PartSize + 1} {
		name := fmt.Sprintf("runs/%d.idx", size)
		first := random(size)
		put(t, b, name, first)
		second := random(size)
		err := b.PutIfAbsent(ctx, name, bytes.NewReader(second), size)
		require.ErrorIs(t, err, objstore.ErrExists, "size %d", size)
		got, err := b.Get(ctx, name, nil)
		require.NoError(t, err)
		require.True(t, bytes.Equal(first, got), "size %d: the object was replaced", size)
	}
}

// A reader that ends before size creates nothing.
func testPutShort(t *testing.T, c Config) {
	b, ctx := c.New(t), t.Context()
	for _, size := range []int64{1000, c.PartSize + 1} {
		name := fmt.Sprintf("short/%d", size)
		err := b.PutIfAbsent(ctx, name, bytes.NewReader(random(size-1)), size)
		require.Error(t, err)
		_, err = b.Stat(ctx, name)
		require.ErrorIs(t, err, objstore.ErrNotFound, "size %d", size)
	}
}

// Writers racing for one name: exactly one wins, and the object is the
// winner's, whole.
func testPutRace(t *testing.T, c Config, size int64, writers int) {
	b, ctx := c.New(t), t.Context()
	datas := make([][]byte, writers)
	errs := make([]error, writers)
	for i := range datas {
		datas[i] = random(size)
	}
	var wg sync.WaitGroup
	for i := range writers {
		wg.Go(func() { errs[i] = b.PutIfAbsent(ctx, "race", bytes.NewReader(datas[i]), size) })
	}
	wg.Wait()
	winner := -1
	for i, err := range errs {
		if err == nil {
			require.Equal(t, -1, winner, "writers %d and %d both created the object", winner, i)
			winner = i
			continue
		}
		require.ErrorIs(t, err, objstore.ErrExists, "writer %d", i)
	}
	require.NotEqual(t, -1, winner, "no writer won")
	got, err := b.Get(ctx, "race", nil)
	require.NoError(t, err)
	require.True(t, bytes.Equal(datas[winner], got), "the object is not the winner's")
}

func testList(t *testing.T, c Config) {
	b, ctx := c.New(t), t.Context()
	n := max(3*c.PageSize+2, 21) // l/01 holds ten
	var want []objstore.Object
	for i := range n {
		o := objstore.Object{Name: fmt.Sprintf("l/%03d", i), Size: int64(i)}
		put(t, b, o.Name, random(o.Size))
		want = append(want, o)
	}
	put(t, b, "l-other", []byte("x"))
	put(t, b, "l/sub/deep", []byte("yy"))
	put(t, b, "m/x", []byte("zzz"))

	begin := time.Now()
	list := func(prefix string) []objstore.Object {
		var got []objstore.Object
		for o, err := range b.List(ctx, prefix) {
			require.NoError(t, err)
			// Clocks differ (a server's, truncated to seconds): a
			// minute's slack.
			require.WithinDuration(t, begin, o.ModTime, time.Minute, "%s", o.Name)
			o.ModTime = time.Time{}
			got = append(got, o)
		}
		return got
	}
	// Listed right after the puts: a backend must list what it was told
	// was created (S3 has been strongly consistent since 2020).
	require.Equal(t, append(slices.Clone(want), objstore.Object{Name: "l/sub/deep", Size: 2}), list("l/"))
	require.Equal(t, want[10:12], list("l/01")[:2])
	require.Len(t, list("l/01"), 10)
	all := list("")
	require.Len(t, all, n+3)
	require.True(t, slices.IsSortedFunc(all, func(a, b objstore.Object) int { return strings.Compare(a.Name, b.Name) }), "not in order: %v", all)
	require.Empty(t, list("nothing/"))

	// Stopping early stops the listing.
	count := 0
	for range b.List(ctx, "l/") {
		count++
		if count == c.PageSize+1 {
			break
		}
	}
	require.Equal(t, c.PageSize+1, count)
}

func testDelete(t *testing.T, c Config) {
	b, ctx := c.New(t), t.Context()
	put(t, b, "points/p1.json", []byte(`{"id":"p1"}`))
	require.NoError(t, b.Delete(ctx, "points/p1.json"))
	_, err := b.Get(ctx, "points/p1.json", nil)
	require.ErrorIs(t, err, objstore.ErrNotFound)
	_, err = b.GetRange(ctx, "points/p1.json", 0, 1, nil)
	require.ErrorIs(t, err, objstore.ErrNotFound)
	_, err = b.Stat(ctx, "points/p1.json")
	require.ErrorIs(t, err, objstore.ErrNotFound)
	for o, err := range b.List(ctx, "points/") {
		require.NoError(t, err)
		t.Fatalf("listed after delete: %v", o)
	}
	require.NoError(t, b.Delete(ctx, "points/p1.json"), "a second delete")
	require.NoError(t, b.Delete(ctx, "never/there"))
	put(t, b, "points/p1.json", []byte("again"))
}

// HostileNames are refused by every method before any I/O.
var HostileNames = []string{
	"", "/abs", "/etc/passwd", "../x", "a/../../b", "a/..", "..", ".", "./a", "a/./b", "a//b", "a/",
	".hidden", "a/.tmp", `a\b`, "a\x00b", "a b", "a\nb", "é", strings.Repeat("a", objstore.MaxNameLen+1),
}

func testHostile(t *testing.T, c Config) {
	b, ctx := c.New(t), t.Context()
	for _, name := range HostileNames {
		err := b.PutIfAbsent(ctx, name, strings.NewReader("x"), 1)
		require.ErrorIs(t, err, objstore.ErrInvalidName, "PutIfAbsent(%q)", name)
		_, err = b.Get(ctx, name, nil)
		require.ErrorIs(t, err, objstore.ErrInvalidName, "Get(%q)", name)
		_, err = b.GetRange(ctx, name, 0, 1, nil)
		require.ErrorIs(t, err, objstore.ErrInvalidName, "GetRange(%q)", name)
		_, err = b.Stat(ctx, name)
		require.ErrorIs(t, err, objstore.ErrInvalidName, "Stat(%q)", name)
		require.ErrorIs(t, b.Delete(ctx, name), objstore.ErrInvalidName, "Delete(%q)", name)
	}
	for o, err := range b.List(ctx, "") {
		require.NoError(t, err)
		t.Fatalf("a hostile name created %q", o.Name)
	}
}

func testCancelled(t *testing.T, c Config) {
	b := c.New(t)
	put(t, b, "x", []byte("x"))
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	require.ErrorIs(t, b.PutIfAbsent(ctx, "y", strings.NewReader("y"), 1), context.Canceled)
	_, err := b.Get(ctx, "x", nil)
	require.ErrorIs(t, err, context.Canceled)
	_, err = b.GetRange(ctx, "x", 0, 1, nil)
	require.ErrorIs(t, err, context.Canceled)
	_, err = b.Stat(ctx, "x")
	require.ErrorIs(t, err, context.Canceled)
	require.ErrorIs(t, b.Delete(ctx, "x"), context.Canceled)
	for _, err := range b.List(ctx, "") {
		require.ErrorIs(t, err, context.Canceled)
	}
	// A reader that never ends is stopped by ctx.
	ctx, cancel = context.WithCancel(t.Context())
	err = b.PutIfAbsent(ctx, "endless", cancelling(cancel), 1<<30)
	require.ErrorIs(t, err, context.Canceled)
	_, err = b.Stat(t.Context(), "endless")
	require.ErrorIs(t, err, objstore.ErrNotFound)
	require.False(t, errors.Is(err, context.Canceled))
}

// cancelling reads zeros, and cancels its context at the first read.
type cancelling context.CancelFunc

func (c cancelling) Read(p []byte) (int, error) {
	c()
	return len(p), nil
}

var _ io.Reader = cancelling(nil)
