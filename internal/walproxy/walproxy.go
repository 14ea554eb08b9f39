// Package walproxy serves a WAL archive to a restore_command over a Unix
// socket: the process that can reach the archive (an export holding a
// connection to a repository mover, under a mover identity only root can
// read) fetches each file a throwaway instance asks for, and the instance's
// restore_command ('pgporter wal-fetch --proxy SOCKET %f %p'), run as the
// instance's OS user, receives it.
//
// On the socket, one request per connection: the client writes the file's
// name and a newline; the server answers "ok SIZE\n" and the file's SIZE
// bytes, "missing\n" when the archive lacks it, or "error MESSAGE\n".
package walproxy

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/pgporter/pgporter/chunkstore"
)

// maxName bounds a request line; WAL file names are at most 40 bytes.
const maxName = 64

// maxSize bounds a file the client accepts (chunkstore.MaxWALSize).
const maxSize = chunkstore.MaxWALSize

// ErrMissing is matched by Fetch's error for a file the archive lacks; it
// also matches chunkstore.ErrWALNotFound.
var ErrMissing = fmt.Errorf("walproxy: %w", chunkstore.ErrWALNotFound)

// FetchFunc writes the archived WAL file name to dst; its error matches
// chunkstore.ErrWALNotFound for a file the archive lacks.
type FetchFunc func(ctx context.Context, name, dst string) error

// Server is a running proxy.
type Server struct {
	dir  string
	sock string
	ln   net.Listener
	wg   sync.WaitGroup
	stop context.CancelFunc
}

// Start listens on a socket in a new directory that the user uid can reach
// (the socket is given to it, mode 0600: no one else but root can
// connect), and serves each request with fetch until Close.
func Start(ctx context.Context, fetch FetchFunc, uid, gid int, log *slog.Logger) (*Server, error) {
	dir, err := os.MkdirTemp("", "pgporter-wal-")
	if err != nil {
		return nil, err
	}
	s := &Server{dir: dir, sock: filepath.Join(dir, "s")}
	fail := func(err error) (*Server, error) {
		os.RemoveAll(dir)
		return nil, fmt.Errorf("walproxy: %w", err)
	}
	if err := os.Chmod(dir, 0o711); err != nil {
		return fail(err)
	}
	if s.ln, err = net.Listen("unix", s.sock); err != nil {
		return fail(err)
	}
	if err := os.Chmod(s.sock, 0o600); err != nil {
		s.ln.Close()
		return fail(err)
	}
	if uid >= 0 {
		if err := os.Chown(s.sock, uid, gid); err != nil {
			s.ln.Close()
			return fail(err)
		}
	}
	ctx, s.stop = context.WithCancel(ctx)
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		for {
			c, err := s.ln.Accept()
			if err != nil {
				return // closed
			}
			s.wg.Add(1)
			go func() {
				defer s.wg.Done()
				defer c.Close()
				s.serve(ctx, c, fetch, log)
			}()
		}
	}()
	return s, nil
}

// Socket returns the socket's path.
func (s *Server) Socket() string { return s.sock }

// Close stops serving, waits for the requests in flight, and removes the
// socket.
func (s *Server) Close() error {
	s.stop()
	err := s.ln.Close()
	s.wg.Wait()
	return errors.Join(err, os.RemoveAll(s.dir))
}

func (s *Server) serve(ctx context.Context, c net.Conn, fetch FetchFunc, log *slog.Logger) {
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	line, err := bufio.NewReader(io.LimitReader(c, maxName+1)).ReadString('\n')
	if err != nil {
		return
	}
	_ = c.SetReadDeadline(time.Time{})
	name := strings.TrimSuffix(line, "\n")
	if !chunkstore.ValidWALName(name) {
		fmt.Fprintf(c, "error %q is not a WAL file name\n", name)
		return
	}
	tmp, err := os.MkdirTemp(s.dir, "f-")
	if err != nil {
		fmt.Fprintf(c, "error %s\n", oneLine(err))
		return
	}
	defer os.RemoveAll(tmp)
	_ = os.Chmod(tmp, 0o700)
	p := filepath.Join(tmp, name)
	if err := fetch(ctx, name, p); err != nil {
		if errors.Is(err, chunkstore.ErrWALNotFound) {
			fmt.Fprint(c, "missing\n")
			return
		}
		log.Warn("fetching WAL for the instance's recovery", "file", name, "err", err)
		fmt.Fprintf(c, "error %s\n", oneLine(err))
		return
	}
	f, err := os.Open(p)
	if err != nil {
		fmt.Fprintf(c, "error %s\n", oneLine(err))
		return
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		fmt.Fprintf(c, "error %s\n", oneLine(err))
		return
	}
	fmt.Fprintf(c, "ok %d\n", fi.Size())
	if _, err := io.Copy(c, f); err != nil {
		log.Debug("sending WAL to the instance", "file", name, "err", err)
	}
}

func oneLine(err error) string {
	s := strings.ReplaceAll(err.Error(), "\n", " ")
	if len(s) > 1024 {
		s = s[:1024]
	}
	return s
}

// Fetch asks the proxy at sock for WAL file name and writes it to dst,
// through a temporary file beside it. A file the archive lacks is
// ErrMissing.
func Fetch(ctx context.Context, sock, name, dst string) error {
	var d net.Dialer
	c, err := d.DialContext(ctx, "unix", sock)
	if err != nil {
		return fmt.Errorf("walproxy: connecting to %s: %w", sock, err)
	}
	defer c.Close()
	stop := context.AfterFunc(ctx, func() { c.Close() })
	defer stop()
	if _, err := fmt.Fprintf(c, "%s\n", name); err != nil {
		return fmt.Errorf("walproxy: asking for %s: %w", name, err)
	}
	rd := bufio.NewReader(c)
	head, err := rd.ReadString('\n')
	if err != nil {
		return fmt.Errorf("walproxy: reading the answer for %s: %w", name, err)
	}
	head = strings.TrimSuffix(head, "\n")
	switch {
	case head == "missing":
		return fmt.Errorf("%w: %s", ErrMissing, name)
	case strings.HasPrefix(head, "error "):
		return fmt.Errorf("walproxy: fetching %s: %s", name, strings.TrimPrefix(head, "error "))
	}
	sz, ok := strings.CutPrefix(head, "ok ")
	size, err := strconv.ParseInt(sz, 10, 64)
	if !ok || err != nil || size < 0 || size > maxSize {
		return fmt.Errorf("walproxy: a malformed answer for %s: %.64q", name, head)
	}
	f, err := os.CreateTemp(filepath.Dir(dst), ".pgporter-wal-")
	if err != nil {
		return fmt.Errorf("walproxy: writing %s: %w", name, err)
	}
	tmp := f.Name()
	defer os.Remove(tmp)
	n, err := io.Copy(f, io.LimitReader(rd, size))
	if err == nil && n != size {
		err = fmt.Errorf("the answer ended after %d of %d bytes", n, size)
	}
	if err = errors.Join(err, f.Chmod(0o600), f.Close()); err != nil {
		return fmt.Errorf("walproxy: receiving %s: %w", name, err)
	}
	if err := os.Rename(tmp, dst); err != nil {
		return fmt.Errorf("walproxy: writing %s: %w", name, err)
	}
	return nil
}
