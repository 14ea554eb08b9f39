package mover

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"syscall"
	"time"

	"github.com/pgporter/pgporter/chunkstore/chunk"
	"github.com/zeebo/blake3"
)

// ManifestName is the file every committed transfer carries at its top, so
// anyone can verify the tree later with 'pgporter verify'.
const ManifestName = "pgporter-manifest.json"

// maxManifestSize bounds the manifests this package reads: a million files
// of long names.
const maxManifestSize = 1 << 30

// Manifest formats: the JSON layouts this package reads.
const (
	// ManifestFormat (format 1) gives each file's whole-content BLAKE3
	// (ManifestFile.BLAKE3). Receivers of protocol 2 wrote it; a tree
	// published in place still does.
	ManifestFormat = "pgporter-manifest/1"
	// ManifestFormat2 gives each file's chunk-list hash
	// (ManifestFile.ChunksBLAKE3, chunk.FileListHash) under the
	// manifest's Chunking parameters: what a receiver of protocol 3 checks
	// at commit without reading the file again.
	ManifestFormat2 = "pgporter-manifest/2"
)

// Manifest describes a committed tree.
type Manifest struct {
	Format   string         `json:"format"`
	Transfer string         `json:"transfer"`
	Created  time.Time      `json:"created"`
	Chunking chunk.Params   `json:"chunking"`
	Files    []ManifestFile `json:"files"`
	Bytes    int64          `json:"bytes"`
}

// ManifestFile is one regular file of a committed tree.
type ManifestFile struct {
	Path  string    `json:"path"` // canonical relative slash path
	Size  int64     `json:"size"`
	Mode  FileMode  `json:"mode"`
	MTime time.Time `json:"mtime"`
	// BLAKE3 is the whole file's BLAKE3 (format 1).
	BLAKE3 Hash `json:"blake3,omitzero"`
	// ChunksBLAKE3 is the file's chunk.FileListHash (format 2): not a
	// hash of the content, so that nobody feeds it to b3sum.
	ChunksBLAKE3 Hash `json:"chunks_blake3,omitzero"`
}

// Hash is a BLAKE3-256 digest of a whole file.
type Hash [32]byte

func (h Hash) String() string               { return hex.EncodeToString(h[:]) }
func (h Hash) MarshalText() ([]byte, error) { return []byte(h.String()), nil }
func (h *Hash) UnmarshalText(b []byte) error {
	if len(b) != 64 {
		return fmt.Errorf("hash %q: want 64 hex digits", b)
	}
	_, err := hex.Decode(h[:], b)
	return err
}

// FileMode is a permission mode written in octal in JSON ("0600").
type FileMode uint32

func (m FileMode) MarshalText() ([]byte, error) { return []byte(fmt.Sprintf("%04o", uint32(m))), nil }
func (m *FileMode) UnmarshalText(b []byte) error {
	v, err := strconv.ParseUint(string(b), 8, 32)
	if err != nil {
		return fmt.Errorf("mode %q: %w", b, err)
	}
	*m = FileMode(v)
	return nil
}

// HashFile returns the BLAKE3-256 of the file at name and its size.
func HashFile(ctx context.Context, f io.Reader) (Hash, int64, error) {
	h := blake3.New()
	buf := make([]byte, 1<<20)
	var n int64
	for {
		if err := ctx.Err(); err != nil {
			return Hash{}, n, err
		}
		m, err := f.Read(buf)
		h.Write(buf[:m])
		n += int64(m)
		if err == io.EOF {
			break
		}
		if err != nil {
			return Hash{}, n, err
		}
	}
	var out Hash
	h.Sum(out[:0])
	return out, n, nil
}

// hashChunkList cuts f with p and returns its chunk.FileListHash (taking
// size as the file's size: a file of another size fails on its length
// anyway), and, with whole, its plain BLAKE3 from the same read.
func hashChunkList(ctx context.Context, f io.Reader, size int64, p chunk.Params, whole bool) (list, sum Hash, n int64, err error) {
	var w *blake3.Hasher
	r := io.Reader(ctxReader{ctx, f})
	if whole {
		w = blake3.New()
		r = io.TeeReader(r, w)
	}
	ch, err := chunk.NewChunker(r, p)
	if err != nil {
		return list, sum, 0, err
	}
	l := chunk.NewFileListHash(uint64(max(size, 0)))
	for {
		c, err := ch.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return list, sum, n, err
		}
		l.Add(chunk.Sum(c.Data), uint32(len(c.Data)))
		n += int64(len(c.Data))
	}
	list = l.Sum()
	if w != nil {
		w.Sum(sum[:0])
	}
	return list, sum, n, nil
}

// ErrVerify is matched by every mismatch Verify reports.
var ErrVerify = errors.New("mover: tree does not match its manifest")

// ErrManifestHash is matched when a tree's manifest is not the one
// expected (VerifyOptions.Expect): the tree is not the one that was sent.
var ErrManifestHash = errors.New("mover: manifest is not the expected one")

// VerifyReport lists what Verify found.
type VerifyReport struct {
	Files        int      `json:"files"`
	Bytes        int64    `json:"bytes"`
	ManifestHash Hash     `json:"manifest_blake3"`
	Problems     []string `json:"problems,omitempty"`
}

// VerifyOptions adjust Verify.
type VerifyOptions struct {
	// Expect, if not nil, is the BLAKE3 the manifest must have (the one
	// the receiver reported when it committed the tree, journaled by the
	// export): a tree whose manifest was rewritten to match altered files
	// fails with ErrManifestHash.
	Expect *Hash
	// FileSum, if not nil, is called with the plain BLAKE3 of each file
	// that verified (what b3sum prints), in manifest order. A format 2
	// manifest does not hold it: the file is hashed a second time as it is
	// read.
	FileSum func(path string, sum Hash)
}

// ParseHash reads a hash as Hash.String writes it (64 hex digits).
func ParseHash(s string) (Hash, error) {
	var h Hash
	err := h.UnmarshalText([]byte(s))
	return h, err
}

// ManifestHash returns the BLAKE3 of dir's manifest, the value the receiver
// reported as the tree's manifest hash when it committed it. The manifest
// is read without following links.
func ManifestHash(dir string) (Hash, error) {
	root, err := os.OpenRoot(dir)
	if err != nil {
		return Hash{}, err
	}
	defer root.Close()
	_, h, err := readRootManifest(root, dir)
	return h, err
}

// readRootManifest reads and parses the manifest at the top of root (a
// regular file, not a link) and returns it with the hash of the very bytes
// parsed.
func readRootManifest(root *os.Root, dir string) (*Manifest, Hash, error) {
	name := filepath.Join(dir, ManifestName)
	fi, err := root.Lstat(ManifestName)
	if err != nil {
		return nil, Hash{}, fmt.Errorf("reading manifest: %w", err)
	}
	if !fi.Mode().IsRegular() {
		return nil, Hash{}, fmt.Errorf("reading manifest: %s is not a regular file", name)
	}
	if fi.Size() > maxManifestSize {
		return nil, Hash{}, fmt.Errorf("reading manifest: %s is larger than %d bytes", name, maxManifestSize)
	}
	f, err := root.OpenFile(ManifestName, os.O_RDONLY|syscall.O_NOFOLLOW, 0)
	if err != nil {
		return nil, Hash{}, fmt.Errorf("reading manifest: %w", err)
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxManifestSize+1))
	if err != nil {
		return nil, Hash{}, fmt.Errorf("reading manifest: %w", err)
	}
	m, err := parseManifest(b, name)
	if err != nil {
		return nil, Hash{}, err
	}
	return m, Hash(blake3.Sum256(b)), nil
}

func parseManifest(b []byte, name string) (*Manifest, error) {
	var m Manifest
	if err := json.Unmarshal(b, &m); err != nil {
		return nil, fmt.Errorf("parsing %s: %w", name, err)
	}
	switch m.Format {
	case ManifestFormat:
	case ManifestFormat2:
		if err := m.Chunking.Validate(); err != nil {
			return nil, fmt.Errorf("%s: %w", name, err)
		}
	default:
		return nil, fmt.Errorf("%s: unknown format %q", name, m.Format)
	}
	return &m, nil
}

// ReadManifest reads DIR/pgporter-manifest.json.
func ReadManifest(dir string) (*Manifest, error) {
	b, err := os.ReadFile(filepath.Join(dir, ManifestName))
	if err != nil {
		return nil, fmt.Errorf("reading manifest: %w", err)
	}
	return parseManifest(b, filepath.Join(dir, ManifestName))
}

// Verify checks the tree at dir against its manifest: every listed file
// exists with its size and hash (format 1: the file's BLAKE3; format 2: its
// chunk list's, the file cut again with the manifest's chunking
// parameters), and no other regular file is present.
// The returned error matches ErrVerify when the tree is damaged; the report
// names each problem.
func Verify(ctx context.Context, dir string) (*VerifyReport, error) {
	return VerifyWith(ctx, dir, VerifyOptions{})
}

// VerifyWith is Verify with options: with o.Expect, a manifest whose hash
// differs fails with an error matching ErrManifestHash before any file is
// read.
func VerifyWith(ctx context.Context, dir string, o VerifyOptions) (*VerifyReport, error) {
	root, err := os.OpenRoot(dir)
	if err != nil {
		return nil, err
	}
	defer root.Close()
	m, mh, err := readRootManifest(root, dir)
	if err != nil {
		return nil, err
	}
	if o.Expect != nil && mh != *o.Expect {
		return &VerifyReport{ManifestHash: mh}, fmt.Errorf("%w: the manifest of %s has BLAKE3 %s, expected %s: this is not the tree that was sent", ErrManifestHash, dir, mh, *o.Expect)
	}
	rep := &VerifyReport{ManifestHash: mh}
	listed := map[string]bool{ManifestName: true}
	for _, mf := range m.Files {
		listed[mf.Path] = true
		rep.Files++
		f, err := root.Open(filepath.FromSlash(mf.Path))
		if err != nil {
			rep.Problems = append(rep.Problems, fmt.Sprintf("%s: %v", mf.Path, errors.Unwrap(err)))
			continue
		}
		var (
			h, sum Hash
			n      int64
		)
		if m.Format == ManifestFormat {
			h, n, err = HashFile(ctx, f)
			sum = h
		} else {
			h, sum, n, err = hashChunkList(ctx, f, mf.Size, m.Chunking, o.FileSum != nil)
		}
		f.Close()
		if err != nil {
			if ctx.Err() != nil {
				return nil, ctx.Err()
			}
			rep.Problems = append(rep.Problems, fmt.Sprintf("%s: %v", mf.Path, err))
			continue
		}
		rep.Bytes += n
		want, what := mf.BLAKE3, "BLAKE3"
		if m.Format == ManifestFormat2 {
			want, what = mf.ChunksBLAKE3, "chunk list BLAKE3"
		}
		switch {
		case n != mf.Size:
			rep.Problems = append(rep.Problems, fmt.Sprintf("%s: size %d, manifest says %d", mf.Path, n, mf.Size))
		case h != want:
			rep.Problems = append(rep.Problems, fmt.Sprintf("%s: content differs from the manifest (%s %s, expected %s)", mf.Path, what, h.String()[:16], want.String()[:16]))
		case o.FileSum != nil:
			o.FileSum(mf.Path, sum)
		}
	}
	err = fs.WalkDir(root.FS(), ".", func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !d.IsDir() && !listed[p] {
			rep.Problems = append(rep.Problems, fmt.Sprintf("%s: not in the manifest", p))
		}
		return nil
	})
	if err != nil {
		return rep, fmt.Errorf("listing %s: %w", dir, err)
	}
	slices.Sort(rep.Problems)
	if len(rep.Problems) > 0 {
		return rep, fmt.Errorf("%w: %d problem(s) in %s", ErrVerify, len(rep.Problems), dir)
	}
	return rep, nil
}
