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
	"time"

	"github.com/pgporter/pgporter/chunkstore"
	"github.com/zeebo/blake3"
)

// ManifestName is the file every committed transfer carries at its top, so
// anyone can verify the tree later with 'pgporter verify'.
const ManifestName = "pgporter-manifest.json"

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

// VerifyReport lists what Verify found.
type VerifyReport struct {
	Files    int      `json:"files"`
	Bytes    int64    `json:"bytes"`
	Problems []string `json:"problems,omitempty"`
}

// ReadManifest reads DIR/pgporter-manifest.json.
func ReadManifest(dir string) (*Manifest, error) {
	b, err := os.ReadFile(filepath.Join(dir, ManifestName))
	if err != nil {
		return nil, fmt.Errorf("reading manifest: %w", err)
	}
	var m Manifest
	if err := json.Unmarshal(b, &m); err != nil {
		return nil, fmt.Errorf("parsing %s: %w", filepath.Join(dir, ManifestName), err)
	}
	if m.Format != ManifestFormat {
		return nil, fmt.Errorf("%s: unknown format %q", filepath.Join(dir, ManifestName), m.Format)
	}
	return &m, nil
}

// Verify checks the tree at dir against its manifest: every listed file
// exists with its size and BLAKE3, and no other regular file is present.
// The returned error matches ErrVerify when the tree is damaged; the report
// names each problem.
func Verify(ctx context.Context, dir string) (*VerifyReport, error) {
	m, err := ReadManifest(dir)
	if err != nil {
		return nil, err
	}
	root, err := os.OpenRoot(dir)
	if err != nil {
		return nil, err
	}
	defer root.Close()
	rep := &VerifyReport{}
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
