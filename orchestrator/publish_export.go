package orchestrator

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/pgporter/pgporter/chunkstore/chunk"
	"github.com/pgporter/pgporter/mover"
	"github.com/pgporter/pgporter/staging"
)

// PublishedExportOptions configure Publisher.Export.
type PublishedExportOptions struct {
	ID        string   // the publication; required
	Databases []string // required
	To        string   // directory on this host; each database goes to To/<db>
	User      string   // PostgreSQL user that dumps; default "postgres"
	Password  string   // its password as of the backup
	Jobs      int      // pg_dump -j; default 2
}

// PublishedDump is one database exported from a publication.
type PublishedDump struct {
	Name    string  `json:"name"`
	Path    string  `json:"path"`
	Bytes   int64   `json:"bytes"`
	Seconds float64 `json:"seconds"`
}

// ErrNotUp is returned by Export for a publication that is not serving.
var ErrNotUp = errors.New("publication is not up")

// Export dumps databases of a running publication with pg_dump -Fd on this
// host, over the instance's private socket, into To/<db>, each with a
// pgporter-manifest.json that 'pgporter verify' checks. The publication
// stays up, and other clients may keep using it meanwhile. A target that
// exists is refused; a dump that fails leaves only To/<db>.partial.
func (pb *Publisher) Export(ctx context.Context, o PublishedExportOptions) ([]PublishedDump, error) {
	if o.User == "" {
		o.User = "postgres"
	}
	if len(o.Databases) == 0 || o.To == "" {
		return nil, errors.New("an export needs databases and a target directory")
	}
	p, err := pb.j.GetPublication(o.ID)
	if err != nil {
		return nil, err
	}
	if p.On != "" {
		return nil, fmt.Errorf("publication %s runs on mover %s: export from it with 'pgporter export --published', which runs there", p.ID, p.On)
	}
	in, err := pb.instance(p)
	if err != nil {
		return nil, err
	}
	to, err := filepath.Abs(o.To)
	if err != nil {
		return nil, err
	}
	for _, db := range o.Databases {
		if db == "" || db == "." || db == ".." || filepath.Base(db) != db {
			return nil, fmt.Errorf("database %q cannot name a directory under %s", db, to)
		}
		if _, err := os.Lstat(filepath.Join(to, db)); err == nil {
			return nil, fmt.Errorf("%s exists already; remove it or choose another target", filepath.Join(to, db))
		}
	}
	if err := os.MkdirAll(to, 0o755); err != nil {
		return nil, err
	}
	rep, err := in.Check(ctx, staging.CheckOptions{Databases: o.Databases, User: o.User, Password: o.Password, DumpDir: to})
	if err != nil {
		return nil, err
	}
	if err := rep.Err(); err != nil {
		return nil, err
	}
	var out []PublishedDump
	for _, db := range o.Databases {
		start := time.Now()
		dir := filepath.Join(to, db)
		pb.log.Info("dumping from publication", "publication", p.ID, "db", db, "to", dir)
		res, err := in.Dump(ctx, staging.DumpOptions{DB: db, User: o.User, Password: o.Password, Dir: dir, Jobs: o.Jobs})
		if err != nil {
			return out, err
		}
		if err := writeDumpManifest(ctx, dir, p.ID+"/"+db); err != nil {
			return out, fmt.Errorf("writing the manifest of %s: %w", dir, err)
		}
		out = append(out, PublishedDump{Name: db, Path: dir, Bytes: res.Bytes, Seconds: time.Since(start).Seconds()})
	}
	return out, nil
}

// writeDumpManifest hashes every file of the finished dump in dir and
// writes its pgporter-manifest.json: temp file, fsync, rename, directory
// fsync.
func writeDumpManifest(ctx context.Context, dir, name string) error {
	m := mover.Manifest{Format: mover.ManifestFormat, Transfer: name, Created: time.Now().UTC(), Chunking: chunk.DefaultParams}
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil || !d.Type().IsRegular() {
			return err
		}
		rel, err := filepath.Rel(dir, path)
		if err != nil {
			return err
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		f, err := os.Open(path)
		if err != nil {
			return err
		}
		h, n, err := mover.HashFile(ctx, f)
		f.Close()
		if err != nil {
			return err
		}
		m.Files = append(m.Files, mover.ManifestFile{Path: filepath.ToSlash(rel), Size: n, Mode: mover.FileMode(fi.Mode().Perm()), MTime: fi.ModTime().UTC(), BLAKE3: h})
		m.Bytes += n
		return nil
	})
	if err != nil {
		return err
	}
	slices.SortFunc(m.Files, func(a, b mover.ManifestFile) int {
		switch {
		case a.Path < b.Path:
			return -1
		case a.Path > b.Path:
			return 1
		}
		return 0
	})
	b, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return err
	}
	tmp, err := os.CreateTemp(dir, ".manifest-*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(b); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	if err := os.Chmod(tmp.Name(), 0o644); err != nil {
		return err
	}
	if err := os.Rename(tmp.Name(), filepath.Join(dir, mover.ManifestName)); err != nil {
		return err
	}
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}
