package orchestrator

import (
	"cmp"
	"context"
	"fmt"
	"log/slog"

	"github.com/pgporter/pgporter/chunkstore"
	"github.com/pgporter/pgporter/chunkstore/chunk"
	"github.com/pgporter/pgporter/mover"
	"github.com/pgporter/pgporter/staging"
)

// Source is a backup repository that restore points are read from: the
// local repository (a directory) or a repository mover (ADDR#PEER_ID).
// Exports, publications and 'pgporter mount' all read through one.
type Source interface {
	// Resolve finds restore point id ("latest" included).
	Resolve(ctx context.Context, id string) (*chunkstore.RestorePoint, error)
	// List returns every restore point, oldest first.
	List(ctx context.Context) ([]chunkstore.RestorePoint, error)
	// Tree reads rp's tree.
	Tree(ctx context.Context, rp *chunkstore.RestorePoint) ([]chunkstore.Node, error)
	// Get reads a chunk, verified: what a mount reads its files from.
	staging.ChunkReader
	Close() error
}

// SourceOptions say where a Source is.
type SourceOptions struct {
	Repo     string // a local repository's directory, or
	RepoPeer string // a repository mover, ADDR#PEER_ID, reached as the mover of Home
	Home     string
	Remote   mover.RemoteRepoOptions // for RepoPeer
	Log      *slog.Logger
}

// OpenSource opens the repository o names. Reading never creates one: a
// local directory that holds no repository is an error.
func OpenSource(ctx context.Context, o SourceOptions) (Source, error) {
	if o.RepoPeer != "" {
		addr, pid, err := mover.ParsePeerAddr(o.RepoPeer)
		if err != nil {
			return nil, err
		}
		rr, err := mover.DialRepo(ctx, o.Home, addr, pid, o.Remote)
		if err != nil {
			return nil, fmt.Errorf("repository mover %s: %w", o.RepoPeer, err)
		}
		return rr, nil
	}
	// OpenRepo creates a missing repository; reading must not.
	if _, err := chunkstore.ListRepo(ctx, o.Repo); err != nil {
		return nil, err
	}
	repo, err := chunkstore.OpenRepo(ctx, o.Repo, o.Log)
	if err != nil {
		return nil, fmt.Errorf("opening repository: %w", err)
	}
	return localSource{repo}, nil
}

// OpenRestorePoint opens the repository o names and reads restore point
// id's tree. The caller closes the Source.
func OpenRestorePoint(ctx context.Context, o SourceOptions, id string) (Source, *chunkstore.RestorePoint, []chunkstore.Node, error) {
	return openPointAt(ctx, o, id, nil)
}

// openPointAt is OpenRestorePoint where "latest" with a point-in-time
// target at means the newest restore point taken before it.
func openPointAt(ctx context.Context, o SourceOptions, id string, at *PointInTime) (Source, *chunkstore.RestorePoint, []chunkstore.Node, error) {
	src, err := OpenSource(ctx, o)
	if err != nil {
		return nil, nil, nil, err
	}
	if at != nil && id == "latest" {
		if id, err = pointBefore(ctx, src, at, cmp.Or(o.RepoPeer, o.Repo)); err != nil {
			src.Close()
			return nil, nil, nil, err
		}
	}
	rp, err := src.Resolve(ctx, id)
	var tree []chunkstore.Node
	if err == nil {
		tree, err = src.Tree(ctx, rp)
	}
	if err != nil {
		src.Close()
		if o.RepoPeer != "" {
			return nil, nil, nil, fmt.Errorf("restore point %s on %s: %w", id, o.RepoPeer, err)
		}
		return nil, nil, nil, err
	}
	return src, rp, tree, nil
}

// localSource is a local repository as a Source.
type localSource struct{ r *chunkstore.Repo }

func (l localSource) Resolve(_ context.Context, id string) (*chunkstore.RestorePoint, error) {
	return l.r.Resolve(id)
}

func (l localSource) List(context.Context) ([]chunkstore.RestorePoint, error) { return l.r.List() }

// FetchWAL writes the archived WAL file name to dst: what the WAL proxy
// serves an instance recovering from a repository on object storage.
func (l localSource) FetchWAL(ctx context.Context, name, dst string) error {
	return l.r.FetchWAL(ctx, name, dst)
}

func (l localSource) Tree(ctx context.Context, rp *chunkstore.RestorePoint) ([]chunkstore.Node, error) {
	tree, err := l.r.Tree(ctx, rp)
	if err != nil {
		return nil, fmt.Errorf("reading restore point %s: %w", rp.ID, err)
	}
	return tree, nil
}

func (l localSource) Get(ctx context.Context, id chunk.ID, dst []byte) ([]byte, error) {
	return l.r.Store().Get(ctx, id, dst)
}

func (l localSource) Close() error { return l.r.Close() }
