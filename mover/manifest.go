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

	"github.com/pgporter/pgporter/chunkstore"
	"github.com/zeebo/blake3"
)

// ManifestName is the file every committed transfer carries at its top, so
// anyone can verify the tree later with 'pgporter verify'.
const ManifestName = "pgporter-manifest.json"

// maxManifestSize bounds the manifests this package reads: a million files
// of long names.
const maxManifestSize = 1 << 30

// ManifestFormat names the manifest's JSON layout.
const ManifestFormat = "pgporter-manifest/1"

// Manifest describes a committed tree.
type Manifest struct {
	Format   string            `json:"format"`
	Transfer string            `json:"transfer"`
	Created  time.Time         `json:"created"`
	Chunking chunkstore.Params `json:"chunking"`
	Files    []ManifestFile    `json:"files"`
	Bytes    int64             `json:"bytes"`
}

// ManifestFile is one regular file of a committed tree.
type ManifestFile struct {
	Path   string    `json:"path"` // canonical relative slash path
	Size   int64     `json:"size"`
	Mode   FileMode  `json:"mode"`
	MTime  time.Time `json:"mtime"`
	BLAKE3 Hash      `json:"blake3"`
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
	if m.Format != ManifestFormat {
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
// exists with its size and BLAKE3, and no other regular file is present.
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
		h, n, err := HashFile(ctx, f)
		f.Close()
		if err != nil {
			if ctx.Err() != nil {
				return nil, ctx.Err()
			}
			rep.Problems = append(rep.Problems, fmt.Sprintf("%s: %v", mf.Path, err))
			continue
		}
		rep.Bytes += n
		switch {
		case n != mf.Size:
			rep.Problems = append(rep.Problems, fmt.Sprintf("%s: size %d, manifest says %d", mf.Path, n, mf.Size))
		case h != mf.BLAKE3:
			rep.Problems = append(rep.Problems, fmt.Sprintf("%s: content differs from the manifest (BLAKE3 %s, expected %s)", mf.Path, h.String()[:16], mf.BLAKE3.String()[:16]))
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
