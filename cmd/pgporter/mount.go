package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/pgporter/pgporter/chunkstore"
	"github.com/pgporter/pgporter/mover"
	"github.com/pgporter/pgporter/orchestrator"
	"github.com/pgporter/pgporter/staging"
)

type mountOpts struct {
	repo, repoPeer, restorePoint string
	owner, cowDir                string
	keepCow                      bool
	retryFor                     time.Duration
}

// unmountTries is how many times an interrupted mount tries a clean unmount
// while the mount is busy before it detaches lazily; unmountPause is the
// pause between tries.
const (
	unmountTries = 5
	unmountPause = 200 * time.Millisecond
)

func newMountCmd(g *globals) *cobra.Command {
	var o mountOpts
	c := &cobra.Command{
		Use:   "mount (--repo DIR | --repo-peer ADDR#PEER_ID) --restore-point ID|latest MOUNTPOINT",
		Short: "Mount a restore point through FUSE with a copy-on-write layer",
		Long: `Mount a restore point of the repository DIR at MOUNTPOINT (an existing,
empty directory) and serve it in the foreground until interrupted.

With --repo-peer the repository is another host's, served by 'pgporter mover
serve --repo' there, which must trust this mover (--home) with read; chunks
are fetched over the mover protocol as they are read, and a read waits
through network drops for up to --retry-for rather than failing.

Reads are served from the repository's chunks on demand; writes (PostgreSQL
replaying WAL, writing postmaster.pid) go to a copy-on-write layer and never
reach the repository. Files appear owned by --owner (default postgres), and
other users may use the mount, so PostgreSQL can run on it as that user.

SIGINT (Ctrl-C) or SIGTERM unmounts and discards the copy-on-write layer
(unless --keep-cow). While processes still use the mount, it retries a few
times, naming them, then detaches the mount lazily. A mount left behind by
a crashed pgporter is detached at the next mount of the same point.

Example:
  pgporter mount --repo /srv/pgporter/repo --restore-point latest /mnt/pgdata
  pgporter mount --repo-peer repo1:7448#PEER_ID --restore-point latest /mnt/pgdata`,
		RunE: func(cmd *cobra.Command, args []string) error { return runMount(cmd.Context(), g, o, args) },
	}
	f := c.Flags()
	f.StringVar(&o.repo, "repo", "", "repository: a directory or s3://BUCKET/PREFIX")
	f.StringVar(&o.repoPeer, "repo-peer", "", "repository served by the mover at ADDR#PEER_ID")
	f.DurationVar(&o.retryFor, "retry-for", 2*time.Minute, "with --repo-peer: how long a read retries through network failures")
	f.StringVar(&o.restorePoint, "restore-point", "", "restore point ID, or latest")
	f.StringVar(&o.owner, "owner", "postgres", "OS user every file appears to belong to")
	f.StringVar(&o.cowDir, "cow-dir", "", "directory for the copy-on-write layer, absent or empty (default: a new directory under --home)")
	f.BoolVar(&o.keepCow, "keep-cow", false, "keep the copy-on-write layer after unmounting")
	addCacheSizeFlag(f)
	c.MarkFlagsMutuallyExclusive("repo", "repo-peer")
	return c
}

func runMount(ctx context.Context, g *globals, o mountOpts, args []string) error {
	switch {
	case len(args) != 1:
		return usagef("mount needs exactly one MOUNTPOINT, got %d arguments", len(args))
	case o.repo == "" && o.repoPeer == "":
		return usagef("mount needs --repo DIR or --repo-peer ADDR#PEER_ID")
	case o.restorePoint == "":
		return usagef("mount needs --restore-point ID or --restore-point latest")
	}
	mnt, err := filepath.Abs(args[0])
	if err != nil {
		return usagef("mountpoint %s: %v", args[0], err)
	}
	// Before looking at the mountpoint: a stale mount fails every access.
	cleaned, err := staging.CleanStaleMount(mnt)
	if errors.Is(err, staging.ErrMountInUse) {
		return mark(fmt.Errorf("mountpoint %s is already mounted by a running mount", mnt), err)
	}
	if err != nil {
		return err
	}
	if cleaned {
		g.log.Warn("detached a stale mount left by a crashed pgporter", "mountpoint", mnt)
	}
	if err := checkMountpoint(mnt); err != nil {
		return err
	}
	src, rp, tree, err := openMountSource(ctx, g, o)
	if err != nil {
		return err
	}
	defer src.Close()

	cowDir, ownCowDir := o.cowDir, o.cowDir == ""
	if ownCowDir {
		base := filepath.Join(g.home, "cow")
		if err := os.MkdirAll(base, 0o700); err != nil {
			return fmt.Errorf("creating the copy-on-write directory: %w", err)
		}
		if cowDir, err = os.MkdirTemp(base, rp.ID+"-"); err != nil {
			return fmt.Errorf("creating the copy-on-write directory: %w", err)
		}
	}
	discard := func() {
		if o.keepCow {
			fmt.Fprintf(g.stdout, "kept the copy-on-write layer in %s\n", cowDir)
			return
		}
		if err := removeCow(cowDir, ownCowDir); err != nil {
			g.log.Warn("removing the copy-on-write layer", "dir", cowDir, "err", err)
		}
	}

	m, err := staging.Mount(ctx, mnt, tree, src, staging.MountOptions{Owner: o.owner, CowDir: cowDir, Log: g.log})
	if err != nil {
		if ownCowDir {
			_ = os.Remove(cowDir)
		}
		return err
	}
	unmounted := make(chan struct{})
	go func() {
		m.Wait()
		close(unmounted)
	}()
	fmt.Fprintf(g.stdout, "mounted restore point %s at %s; press Ctrl-C or run 'kill %d' to unmount\n", rp.ID, mnt, os.Getpid())

	select {
	case <-unmounted:
		// Unmounted from outside (umount, fusermount -u): the CoW files
		// stay open until exit, which is soon.
		discard()
		return fmt.Errorf("%s was unmounted from outside pgporter", mnt)
	case <-ctx.Done():
	}
	detached, err := unmount(g.stderr, m)
	switch {
	case err != nil:
	case detached:
		fmt.Fprintf(g.stdout, "detached %s lazily; processes still using it lose access as pgporter exits\n", mnt)
	default:
		<-unmounted
		fmt.Fprintf(g.stdout, "unmounted %s\n", mnt)
	}
	discard()
	return err
}

// openMountSource opens the restore point the mount reads: from the local
// repository or the repository mover. A missing local restore point says
// where to list them.
func openMountSource(ctx context.Context, g *globals, o mountOpts) (orchestrator.Source, *chunkstore.RestorePoint, []chunkstore.Node, error) {
	if o.repoPeer != "" {
		if _, _, err := mover.ParsePeerAddr(o.repoPeer); err != nil {
			return nil, nil, nil, usageError{fmt.Errorf("--repo-peer: %w", err)}
		}
	}
	src, rp, tree, err := orchestrator.OpenRestorePoint(ctx, orchestrator.SourceOptions{Repo: o.repo, RepoPeer: o.repoPeer, Home: g.home,
		Remote: mover.RemoteRepoOptions{RetryFor: o.retryFor, Log: g.log}, Log: g.log}, o.restorePoint)
	if errors.Is(err, chunkstore.ErrNoRestorePoint) && o.repoPeer == "" {
		err = fmt.Errorf("%w (see 'pgporter restore-points --repo %s')", err, o.repo)
	}
	return src, rp, tree, err
}

// unmount unmounts m, retrying briefly while it is busy and naming who keeps
// it busy, then detaches it lazily. It reports whether it had to detach.
func unmount(stderr io.Writer, m *staging.Mounted) (detached bool, err error) {
	for try := 1; ; try++ {
		err := m.Unmount()
		if err == nil {
			return false, nil
		}
		var who []string
		for _, u := range staging.Users(m.Dir()) {
			who = append(who, fmt.Sprintf("%s (pid %d)", u.Command, u.PID))
		}
		if len(who) == 0 {
			who = []string{"unknown processes"}
		}
		if try == unmountTries {
			fmt.Fprintf(stderr, "pgporter: %s is still busy, used by %s; detaching it lazily\n", m.Dir(), strings.Join(who, ", "))
			return true, m.Detach()
		}
		fmt.Fprintf(stderr, "pgporter: %s is busy, used by %s; retrying (%d/%d)\n", m.Dir(), strings.Join(who, ", "), try, unmountTries-1)
		time.Sleep(unmountPause)
	}
}

// checkMountpoint refuses a mountpoint that is missing, not a directory or
// not empty: mounting over files would hide them.
func checkMountpoint(dir string) error {
	fi, err := os.Stat(dir)
	switch {
	case errors.Is(err, os.ErrNotExist):
		return usagef("mountpoint %s does not exist; create an empty directory first", dir)
	case err != nil:
		return usagef("mountpoint %s: %v", dir, err)
	case !fi.IsDir():
		return usagef("mountpoint %s is not a directory", dir)
	}
	ents, err := os.ReadDir(dir)
	if err != nil {
		return usagef("mountpoint %s: %v", dir, err)
	}
	if len(ents) > 0 {
		return usagef("mountpoint %s is not empty", dir)
	}
	return nil
}

// removeCow discards a copy-on-write layer: the whole directory when pgporter
// made it, its content when the user named it.
func removeCow(dir string, own bool) error {
	if own {
		return os.RemoveAll(dir)
	}
	ents, err := os.ReadDir(dir)
	if err != nil {
		return err
	}
	var errs []error
	for _, e := range ents {
		errs = append(errs, os.RemoveAll(filepath.Join(dir, e.Name())))
	}
	return errors.Join(errs...)
}
