package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/pgporter/pgporter/chunkstore"
	"github.com/pgporter/pgporter/internal/bytesize"
	"github.com/pgporter/pgporter/mover"
	"github.com/pgporter/pgporter/orchestrator"
	"github.com/spf13/cobra"
)

type serveOpts struct {
	listen, metrics, reserve, repo string
	passwordFile                   string // of an encrypted repo
	peerMemory, totalMemory        string
	memoryLimit                    string
	syncBytes                      string
	syncInterval                   time.Duration
	roots                          []string
	verifyCommit                   bool
	// What this host decides for jobs of peers trusted with orchestrate.
	stagingDir, osUser, jobRepo, publishListen string
}

func newMoverServeCmd(g *globals) *cobra.Command {
	var so serveOpts
	c := &cobra.Command{
		Use:   "serve --listen ADDR [--root DIR]... [--repo DIR] [--metrics ADDR]",
		Short: "Serve transfers, repository reads and orchestration",
		Long: `Run the mover daemon in the foreground: accept QUIC connections (mutual TLS,
only from peers in this mover's trust list) and receive transfers into the
--root directories. With --repo it also serves that backup repository's
restore points and chunks to peers trusted with read (for 'pgporter mount
--repo-peer' on a staging host). SIGINT or SIGTERM stops it gracefully: data already
received is made durable so that the sender's rerun resumes.

Peers trusted with orchestrate hand it export sessions and publications
('pgporter publish --on'), which run under its --home. This host decides,
not the peer: where dumps are staged (--staging-dir), the OS user that runs
PostgreSQL (--os-user), the only local repository jobs may read
(--job-repo; otherwise a job names a repository mover) and the address
publications listen on (--publish-listen). A job that asks for other values
is refused, and every local path a job names (a --to on this host) must
lie inside a --root, links resolved. When it starts, it
releases what interrupted sessions held, and handles every publication of its
home whose background process is dead as that publication's --on-restart
says: serve it again on the same copy-on-write layer, address and port
(restart, the default), or unpublish it (cleanup).

--metrics serves Prometheus metrics over HTTP without authentication: on a
Unix socket (--metrics unix:/run/pgporter/metrics.sock) or a loopback address
(--metrics 127.0.0.1:9448); another address works but is warned about. The
metrics are on /metrics; /healthz answers 200 "ok" while the mover serves
(503 once it is stopping); other paths are 404.

Example:
  pgporter mover serve --listen :7448 --root /srv/dumps --metrics 127.0.0.1:9448
  pgporter mover serve --listen :7448 --repo /srv/pgporter/repo`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := applyMemoryLimit(cmd, so.memoryLimit); err != nil {
				return err
			}
			so.passwordFile = passwordFileFlag(cmd)
			return runServe(cmd.Context(), g, so)
		},
	}
	f := c.Flags()
	f.StringVar(&so.listen, "listen", ":7448", "UDP address to listen on")
	f.StringArrayVar(&so.roots, "root", nil, "directory that transfers may write into (repeatable)")
	f.StringVar(&so.repo, "repo", "", "backup repository to serve to peers trusted with read: a directory or s3://BUCKET/PREFIX")
	f.StringVar(&so.metrics, "metrics", "", "where to serve Prometheus metrics over HTTP, without authentication: a Unix socket (unix:/run/pgporter/metrics.sock, mode 0660) or a loopback address (127.0.0.1:9448); any other address is open to the network and warned about")
	f.StringVar(&so.syncBytes, "sync-bytes", "64M", "make received chunks durable (fsync, and their positions recorded) after this many bytes of a transfer: a crash of this host then costs the sender's rerun at most about this much again; smaller means more syncs")
	f.DurationVar(&so.syncInterval, "sync-interval", time.Second, "... or after this long, whichever comes first")
	f.StringVar(&so.reserve, "reserve", "64M", "free space every transfer must leave on a root's filesystem")
	f.StringVar(&so.peerMemory, "peer-memory", "512M", "memory the transfers of one peer may hold (chunk positions, data-stream buffers, open transfers); past it the receiver slows the peer down, it does not fail")
	f.StringVar(&so.totalMemory, "total-memory", "2G", "memory the transfers of all peers together may hold")
	addMemoryLimitFlag(f, &so.memoryLimit, serveMemoryLimit)
	addCacheSizeFlag(f)
	f.BoolVar(&so.verifyCommit, "verify-commit", false, "read every received file again before committing it (the commit already checks that each byte was verified against its chunk on arrival; this also catches a file changed on disk while the transfer ran, at the cost of a second read)")
	f.StringVar(&so.stagingDir, "staging-dir", orchestrator.DefaultStagingDir, "where export jobs of peers trusted with orchestrate write their dumps (must be reachable by --os-user)")
	f.StringVar(&so.osUser, "os-user", "postgres", "OS user that runs PostgreSQL for jobs of peers trusted with orchestrate")
	f.StringVar(&so.jobRepo, "job-repo", "", "local repository that jobs of peers trusted with orchestrate may read (export and publish --on); without it they name a repository mover")
	f.StringVar(&so.publishListen, "publish-listen", "127.0.0.1", "IP address (or *) that publications of peers trusted with orchestrate listen on")
	return c
}

// stagingJobs is the job runner of this mover, with the settings that only
// this host decides, made absolute.
func stagingJobs(g *globals, so serveOpts, serve orchestrator.ServeCommand) (*orchestrator.StagingJobs, error) {
	jobs := &orchestrator.StagingJobs{Home: g.home, Log: g.log, Self: selfCommand, Serve: serve, Roots: slices.Clone(so.roots), OSUser: so.osUser, PublishListen: so.publishListen}
	if so.osUser == "" {
		return nil, usagef("--os-user must name an OS user")
	}
	if so.publishListen != "*" && net.ParseIP(so.publishListen) == nil {
		return nil, usagef("--publish-listen %q is not an IP address or *", so.publishListen)
	}
	var err error
	if jobs.StagingDir, err = filepath.Abs(so.stagingDir); err != nil {
		return nil, usageError{fmt.Errorf("--staging-dir: %w", err)}
	}
	if so.jobRepo != "" {
		if jobs.Repo, err = chunkstore.AbsRepo(so.jobRepo); err != nil {
			return nil, usageError{fmt.Errorf("--job-repo: %w", err)}
		}
	}
	for i, r := range so.roots {
		if jobs.Roots[i], err = filepath.Abs(r); err != nil {
			return nil, usageError{fmt.Errorf("--root: %w", err)}
		}
	}
	return jobs, nil
}

// listenMetrics listens where --metrics says: "unix:PATH" is a Unix socket
// (a stale socket at PATH is replaced, any other file is not), anything
// else a TCP address. The metrics have no authentication, so an address
// that is not loopback gets a warning on stderr.
func listenMetrics(addr string, stderr io.Writer) (net.Listener, error) {
	if path, ok := strings.CutPrefix(addr, "unix:"); ok {
		if path == "" || !filepath.IsAbs(path) {
			return nil, fmt.Errorf("unix:%s: want an absolute path, e.g. unix:/run/pgporter/metrics.sock", path)
		}
		if fi, err := os.Lstat(path); err == nil && fi.Mode().Type() == fs.ModeSocket {
			_ = os.Remove(path) // left by a mover that was killed
		}
		ln, err := net.Listen("unix", path)
		if err != nil {
			return nil, err
		}
		if err := os.Chmod(path, 0o660); err != nil {
			ln.Close()
			return nil, err
		}
		return ln, nil
	}
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, fmt.Errorf("%q: want unix:PATH or HOST:PORT (e.g. 127.0.0.1:9448): %w", addr, err)
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, err
	}
	if !loopbackHost(host) {
		fmt.Fprintf(stderr, "warning: --metrics %s serves metrics without authentication beyond this host; prefer a loopback address (127.0.0.1:PORT) or unix:PATH\n", addr)
	}
	return ln, nil
}

// loopbackHost reports whether a listen host reaches only this host:
// "localhost" or a loopback IP. An empty host is every address.
func loopbackHost(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// validateListen checks --listen before anything starts: HOST:PORT with an
// empty HOST for every address and port 0 for any free port.
func validateListen(addr string) error {
	if err := checkHostPort("udp", addr); err != nil {
		return usagef("--listen %q: %v: want HOST:PORT or :PORT, e.g. :7448", addr, err)
	}
	return nil
}

// checkHostPort checks that addr is HOST:PORT with a port of network.
func checkHostPort(network, addr string) error {
	_, port, err := net.SplitHostPort(addr)
	if err == nil {
		if _, perr := net.LookupPort(network, port); perr != nil {
			err = fmt.Errorf("port %q is not a number from 0 to 65535", port)
		}
	}
	if ae, ok := errors.AsType[*net.AddrError](err); ok {
		err = errors.New(ae.Err) // its text repeats the address
	}
	return err
}

// validateMetrics checks --metrics before anything starts, as
// validateListen does --listen: a malformed one was exit 1 and a port out
// of range exit 4 (network), once the mover had opened its state.
func validateMetrics(addr string) error {
	if path, ok := strings.CutPrefix(addr, "unix:"); ok {
		if !filepath.IsAbs(path) {
			return usagef("--metrics unix:%s: want an absolute path, e.g. unix:/run/pgporter/metrics.sock", path)
		}
		return nil
	}
	if err := checkHostPort("tcp", addr); err != nil {
		return usagef("--metrics %q: %v: want unix:PATH or HOST:PORT, e.g. 127.0.0.1:9448", addr, err)
	}
	return nil
}

// validateRoots checks that each --root is a directory: one that is not
// there, or is a file, was exit 1 with lstat's or open's words.
func validateRoots(roots []string) error {
	for _, r := range roots {
		fi, err := os.Stat(r)
		switch {
		case errors.Is(err, fs.ErrNotExist):
			return mark(fmt.Errorf("--root %s: no such directory", r), errNotFound)
		case err == nil && !fi.IsDir():
			return usagef("--root %s is not a directory", r)
		}
	}
	return nil
}

func runServe(ctx context.Context, g *globals, so serveOpts) error {
	if err := validateListen(so.listen); err != nil {
		return err
	}
	if so.metrics != "" {
		if err := validateMetrics(so.metrics); err != nil {
			return err
		}
	}
	if err := validateRoots(so.roots); err != nil {
		return err
	}
	var memory [2]int64
	for i, m := range []struct{ flag, v string }{{"--peer-memory", so.peerMemory}, {"--total-memory", so.totalMemory}} {
		n, err := bytesize.Parse(m.v)
		if err == nil && n < 64<<20 {
			err = fmt.Errorf("%s is below the 64M a transfer needs", m.v)
		}
		if err != nil {
			return usageError{fmt.Errorf("%s: %w", m.flag, err)}
		}
		memory[i] = n
	}
	reserve, err := bytesize.Parse(so.reserve)
	if err != nil {
		return usageError{fmt.Errorf("--reserve: %w", err)}
	}
	syncBytes, err := bytesize.Parse(so.syncBytes)
	if err == nil && syncBytes < 64<<10 {
		err = fmt.Errorf("%s is below 64K", so.syncBytes)
	}
	if err != nil {
		return usageError{fmt.Errorf("--sync-bytes: %w", err)}
	}
	if so.syncInterval < time.Millisecond {
		return usagef("--sync-interval: %v is below 1ms", so.syncInterval)
	}
	// Every mover can be a staging mover: peers trusted with orchestrate
	// hand it export jobs, journaled under its home.
	serve, err := serveCommand(g)
	if err != nil {
		return err
	}
	jobs, err := stagingJobs(g, so, serve)
	if err != nil {
		return err
	}
	var srv *mover.Server // set before it serves, so before any job ends
	jobs.ExportDone = func(string) { srv.ExportDone(time.Now()) }
	// Closures, not method values: srv is set below.
	jobs.ExportProgress = func(session, step string, done, total int64) { srv.ExportProgress(session, step, done, total) }
	jobs.ExportEnded = func(session string) { srv.ExportEnded(session) }
	// A mover restarted after a crash first stops the instances and
	// detaches the mounts its interrupted sessions left.
	if n, err := orchestrator.ReclaimOrphans(ctx, g.home, g.log); err != nil {
		g.log.Warn("cleaning up after interrupted sessions", "err", err)
	} else if n > 0 {
		g.log.Info("cleaned up after interrupted sessions", "sessions", n)
	}
	// Publications of this home whose background process died (killed,
	// or the host rebooted) are served again or removed, as each says.
	if pb, err := orchestrator.NewPublisher(g.home, g.log); err != nil {
		g.log.Warn("recovering publications", "err", err)
	} else if _, err := pb.Recover(ctx, serve); err != nil {
		g.log.Warn("recovering publications", "err", err)
	}
	waitPortReleased(ctx, so.listen, 30*time.Second, g.log)
	srv, err = mover.NewServer(mover.ServerOptions{Home: g.home, Listen: so.listen, Roots: so.roots, Repo: so.repo, RepoPasswordFile: so.passwordFile, Reserve: reserve, Jobs: jobs, Log: g.log,
		// Scripts and tests read the address (useful with port 0) from
		// stdout, once the mover serves (/healthz says ok from then on).
		Serving:    func() { fmt.Fprintf(g.stdout, "listening on %s as %s\n", srv.Addr(), srv.ID()) },
		PeerMemory: memory[0], TotalMemory: memory[1], VerifyCommit: so.verifyCommit,
		SyncBytes: syncBytes, SyncInterval: so.syncInterval})
	if err != nil {
		return err
	}
	if so.metrics != "" {
		ln, err := listenMetrics(so.metrics, g.stderr)
		if err != nil {
			return fmt.Errorf("--metrics: %w", err)
		}
		hs := &http.Server{Handler: srv.HTTPHandler(), ReadHeaderTimeout: 5 * time.Second}
		go hs.Serve(ln)
		defer hs.Close()
		g.log.Info("metrics", "addr", ln.Addr().String())
	}
	start := time.Now()
	stopping := context.AfterFunc(ctx, func() {
		g.log.Info("mover stopping: closing connections once received data is durable", "listen", srv.Addr().String())
	})
	defer stopping()
	err = srv.Serve(ctx)
	if errors.Is(err, context.Canceled) {
		g.log.Info("mover stopped", "listen", srv.Addr().String(), "uptime", time.Since(start).Round(time.Second).String())
		return nil
	}
	g.log.Error("mover stopped", "listen", srv.Addr().String(), "err", err)
	return err
}
