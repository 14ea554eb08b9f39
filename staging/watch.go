package staging

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"sort"
	"strings"
	"sync"

	"golang.org/x/sys/unix"
)

// closeWatcher reports the files of one directory as their writers close
// them (inotify IN_CLOSE_WRITE), each once: pg_dump writes every file of a
// directory dump once and closes it, so a closed file is complete.
type closeWatcher struct {
	dir    string
	f      *os.File
	report func(name string)

	skip map[string]bool // names whose close events are not reports

	mu   sync.Mutex // guards seen
	seen map[string]bool
	done chan struct{}
}

// watchCloses reports the files of dir as they are closed after writing,
// except the names in skip, which finish reports if they exist then: their
// writer closes them more than once.
func watchCloses(dir string, report func(name string), skip ...string) (*closeWatcher, error) {
	fd, err := unix.InotifyInit1(unix.IN_CLOEXEC | unix.IN_NONBLOCK)
	if err != nil {
		return nil, fmt.Errorf("inotify: %w", err)
	}
	if _, err := unix.InotifyAddWatch(fd, dir, unix.IN_CLOSE_WRITE); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("watching %s: %w", dir, err)
	}
	w := &closeWatcher{dir: dir, f: os.NewFile(uintptr(fd), "inotify"), report: report, skip: map[string]bool{}, seen: map[string]bool{}, done: make(chan struct{})}
	for _, n := range skip {
		w.skip[n] = true
	}
	go w.loop()
	return w, nil
}

func (w *closeWatcher) loop() {
	defer close(w.done)
	readEvents(w.f, func(names []string) {
		for _, name := range names {
			if !w.skip[name] {
				w.once(name)
			}
		}
	})
}

// readEvents passes the names in each read of inotify events to fn, in
// order, until f is closed.
func readEvents(f *os.File, fn func(names []string)) {
	buf := make([]byte, 64<<10)
	var names []string
	for {
		n, err := f.Read(buf)
		if err != nil {
			return // closed
		}
		names = names[:0]
		for b := buf[:n]; len(b) >= unix.SizeofInotifyEvent; {
			nameLen := int(binary.NativeEndian.Uint32(b[12:16]))
			if unix.SizeofInotifyEvent+nameLen > len(b) {
				break
			}
			name := string(b[unix.SizeofInotifyEvent : unix.SizeofInotifyEvent+nameLen])
			for len(name) > 0 && name[len(name)-1] == 0 {
				name = name[:len(name)-1]
			}
			if name != "" {
				names = append(names, name)
			}
			b = b[unix.SizeofInotifyEvent+nameLen:]
		}
		fn(names)
	}
}

// WriteWatcher reports writes to the table data files of a directory dump
// being written (inotify IN_MODIFY on *.dat but toc.dat, which tabledump
// rewrites), so that they can be sent while pg_dump appends to them. It
// says nothing of closes: a dump's OnFile does.
type WriteWatcher struct {
	f    *os.File
	done chan struct{}
}

// WatchWrites starts reporting writes to the data files of dir: report gets
// each written name once per batch of events the kernel hands over (so
// about once per wake-up, not once per write(2)). It is called from one
// goroutine.
func WatchWrites(dir string, report func(name string)) (*WriteWatcher, error) {
	fd, err := unix.InotifyInit1(unix.IN_CLOEXEC | unix.IN_NONBLOCK)
	if err != nil {
		return nil, fmt.Errorf("inotify: %w", err)
	}
	if _, err := unix.InotifyAddWatch(fd, dir, unix.IN_MODIFY); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("watching %s: %w", dir, err)
	}
	w := &WriteWatcher{f: os.NewFile(uintptr(fd), "inotify"), done: make(chan struct{})}
	go func() {
		defer close(w.done)
		seen := map[string]bool{}
		readEvents(w.f, func(names []string) {
			clear(seen)
			for _, n := range names {
				if !seen[n] && strings.HasSuffix(n, ".dat") && n != "toc.dat" {
					seen[n] = true
					report(n)
				}
			}
		})
	}()
	return w, nil
}

// Close stops watching; no report is made once it returns. It may be
// called more than once.
func (w *WriteWatcher) Close() {
	w.f.Close()
	<-w.done
}

func (w *closeWatcher) once(name string) {
	w.mu.Lock()
	dup := w.seen[name]
	w.seen[name] = true
	w.mu.Unlock()
	if !dup {
		w.report(name)
	}
}

// finish stops watching. If complete, the writer is done: every regular
// file of the directory not reported yet is reported now, in name order.
func (w *closeWatcher) finish(complete bool) error {
	w.f.Close()
	<-w.done
	if !complete {
		return nil
	}
	ents, err := os.ReadDir(w.dir)
	if err != nil {
		return err
	}
	var names []string
	for _, e := range ents {
		if e.Type().IsRegular() {
			names = append(names, e.Name())
		} else if e.IsDir() {
			return errors.New("staging: a directory dump holds a subdirectory " + e.Name())
		}
	}
	sort.Strings(names)
	for _, n := range names {
		w.once(n)
	}
	return nil
}
