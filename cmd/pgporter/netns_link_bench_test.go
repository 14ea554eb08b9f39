package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/pgporter/pgporter/internal/testsupport"
	"github.com/pgporter/pgporter/mover"
)

// BenchmarkNetnsLink is issue 16's WAN comparison (docs/design/0005, step
// 4): the same dump-like tree moved by 'pgporter send' to 'pgporter mover
// serve' and by 'rsync -a -z --compress-choice=zstd --compress-level=1' to
// an rsync daemon, interleaved, across testsupport's emulated link (delay
// and loss in user space, the rate with tc tbf on the receiver's veth), for
// each of the two profiles. Each iteration runs both tools once,
// in alternating order; the metrics are medians over the iterations:
//
//	flock /tmp/pgporter-bench.lock go test -run '^$' -bench NetnsLink -benchtime 3x -timeout 60m ./cmd/pgporter/
//
// "speedup" is rsync's time over pgporter's (the "1.5x rsync -z");
// wire bytes are IP bytes through the emulated link, both directions. The
// log has every run with quic-go's path figures (RTT, congestion window,
// loss) for pgporter. PGPORTER_BENCH_SEND_FLAGS adds flags to 'send'.
func BenchmarkNetnsLink(b *testing.B) {
	if _, err := exec.LookPath("rsync"); err != nil {
		b.Fatal("rsync is needed (run make setup)")
	}
	for _, c := range []struct {
		name string
		prof testsupport.LinkProfile
		rate int64 // bytes per second, each direction
		size int   // bytes of dump
	}{
		// 100 Mbit/s, 40 ms RTT, 0.5% loss each way.
		{"wan-100mbit-40ms-0.5pct", testsupport.LinkProfile{Delay: 20 * time.Millisecond, Loss: 0.005, Seed: 16}, 100e6 / 8, 64 << 20},
		// 5% loss each way, 400 ms RTT, same rate.
		{"lossy-5pct-400ms", testsupport.LinkProfile{Delay: 200 * time.Millisecond, Loss: 0.05, Seed: 16}, 100e6 / 8, 3 << 20},
	} {
		b.Run(c.name, func(b *testing.B) {
			l := newLinkBench(b, c.size)
			if err := l.net.SetRate(l.recv, c.rate); err != nil {
				b.Fatal(err)
			}
			if err := l.net.SetLinkProfile(l.recv, c.prof); err != nil {
				b.Fatal(err)
			}
			var pp, rs []linkRun
			i := 0
			for b.Loop() {
				if i%2 == 0 {
					pp = append(pp, l.pgporter(b, i))
					rs = append(rs, l.rsync(b, i))
				} else {
					rs = append(rs, l.rsync(b, i))
					pp = append(pp, l.pgporter(b, i))
				}
				i++
			}
			mp, mr := medianRun(pp), medianRun(rs)
			b.ReportMetric(mp.secs, "pgporter-s")
			b.ReportMetric(mr.secs, "rsync-z-s")
			b.ReportMetric(mr.secs/mp.secs, "speedup")
			b.ReportMetric(float64(mp.wire)/1e6, "pgporter-wire-MB")
			b.ReportMetric(float64(mr.wire)/1e6, "rsync-z-wire-MB")
			b.Logf("%s: dump %d bytes; pgporter %.2fs, rsync -z %.2fs (median of %d): %.2fx rsync -z",
				c.name, l.total, mp.secs, mr.secs, len(pp), mr.secs/mp.secs)
		})
	}
}

// linkBench is a receiving host and a sending host, a dump-like tree on
// the sender's side and an rsync daemon on the receiver's.
type linkBench struct {
	net        *testsupport.Network
	recv, send *testsupport.Host
	src        string
	total      int64
	root       string // the receiver's destination root (pgporter and rsync)
	exe        string
}

const linkBenchRsyncPort = 8730

func newLinkBench(b *testing.B, size int) *linkBench {
	n := testsupport.NewNetwork(b)
	l := &linkBench{net: n, recv: n.AddHost(b, "r"), send: n.AddHost(b, "s"), src: filepath.Join(b.TempDir(), "dump"), root: b.TempDir()}
	var err error
	if l.exe, err = os.Executable(); err != nil {
		b.Fatal(err)
	}
	l.total = linkBenchTree(b, l.src, size)

	conf := filepath.Join(b.TempDir(), "rsyncd.conf")
	if err := os.WriteFile(conf, []byte("use chroot = no\n[bench]\npath = "+l.root+"\nread only = no\nuid = root\ngid = root\n"), 0o600); err != nil {
		b.Fatal(err)
	}
	d := l.recv.Command(context.Background(), "rsync", "--daemon", "--no-detach", "--config="+conf,
		"--address", l.recv.Addr().String(), "--port", fmt.Sprint(linkBenchRsyncPort), "--log-file=/dev/null")
	if err := d.Start(); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		d.Process.Signal(syscall.SIGTERM)
		d.Wait()
	})
	// The daemon prints nothing when it listens: connect until it answers.
	deadline := time.Now().Add(10 * time.Second)
	for {
		c, err := l.recv.DialContext(context.Background(), "tcp", l.recv.AddrPort(linkBenchRsyncPort).String())
		if err == nil {
			c.Close()
			break
		}
		if time.Now().After(deadline) {
			b.Fatalf("the rsync daemon does not answer: %v", err)
		}
		time.Sleep(20 * time.Millisecond) // polling another process's socket
	}
	return l
}

// linkRun is one timed transfer.
type linkRun struct {
	secs float64
	wire int64 // IP bytes through the emulated link, both directions
}

func medianRun(rs []linkRun) linkRun {
	s := slices.Clone(rs)
	slices.SortFunc(s, func(a, b linkRun) int { return int(1e6 * (a.secs - b.secs)) })
	return s[len(s)/2]
}

func (l *linkBench) wire() (bytes, lost int64) {
	st := l.net.LinkStats(l.recv)
	return st.ToHost.Bytes + st.FromHost.Bytes, st.ToHost.Lost + st.FromHost.Lost
}

// pgporter moves the tree with 'pgporter send' to a fresh 'mover serve'
// (fresh homes: nothing deduplicated), which it stops afterwards.
//
// PGPORTER_BENCH_PARALLEL=N (an experiment for step 4.3, several
// connections per transfer) runs N sends of the whole tree at once, each
// over its own connection, and counts the time over N: what one transfer
// split perfectly over N connections would take.
func (l *linkBench) pgporter(b *testing.B, i int) linkRun {
	b.StopTimer()
	par := 1
	if v := os.Getenv("PGPORTER_BENCH_PARALLEL"); v != "" {
		var err error
		if par, err = strconv.Atoi(v); err != nil || par < 1 {
			b.Fatalf("PGPORTER_BENCH_PARALLEL=%q", v)
		}
	}
	dir := b.TempDir()
	recvHome := filepath.Join(dir, "r")
	rid, _, err := mover.InitIdentity(recvHome)
	if err != nil {
		b.Fatal(err)
	}
	ts, err := mover.OpenTrust(recvHome)
	if err != nil {
		b.Fatal(err)
	}
	sendHomes := make([]string, par)
	for k := range sendHomes {
		sendHomes[k] = filepath.Join(dir, fmt.Sprintf("s%d", k))
		sid, _, err := mover.InitIdentity(sendHomes[k])
		if err != nil {
			b.Fatal(err)
		}
		if err := ts.Trust(mover.TrustedPeer{ID: sid.ID, Name: fmt.Sprintf("sender%d", k), Perms: mover.PermSend, Added: time.Now()}); err != nil {
			b.Fatal(err)
		}
	}
	to := l.recv.AddrPort(netnsMoverPort).String()
	srv := l.recv.Command(context.Background(), l.exe, "mover", "serve", "--home", recvHome, "--listen", to, "--root", l.root)
	srv.Env = append(os.Environ(), testMainEnv+"=1")
	var srvErr bytes.Buffer
	srv.Stderr = &srvErr
	out, err := srv.StdoutPipe()
	if err != nil {
		b.Fatal(err)
	}
	if err := srv.Start(); err != nil {
		b.Fatal(err)
	}
	defer func() {
		srv.Process.Signal(syscall.SIGTERM)
		srv.Wait()
	}()
	sc := bufio.NewScanner(out)
	for sc.Scan() && !strings.HasPrefix(sc.Text(), "listening on ") {
	}
	go io.Copy(io.Discard, out)

	cmds := make([]*exec.Cmd, par)
	stdouts, stderrs := make([]bytes.Buffer, par), make([]bytes.Buffer, par)
	for k := range cmds {
		args := []string{"send", "--home", sendHomes[k], "--to", to, "--peer", rid.ID.String(), "--json"}
		args = append(args, strings.Fields(os.Getenv("PGPORTER_BENCH_SEND_FLAGS"))...)
		args = append(args, l.src, filepath.Join(l.root, fmt.Sprintf("pp%d-%d", i, k)))
		cmds[k] = l.send.Command(context.Background(), l.exe, args...)
		cmds[k].Env = append(os.Environ(), testMainEnv+"=1")
		cmds[k].Stdout, cmds[k].Stderr = &stdouts[k], &stderrs[k]
	}
	w0, lost0 := l.wire()
	b.StartTimer()
	t0 := time.Now()
	errs := make(chan error, par)
	for _, cmd := range cmds {
		go func() { errs <- cmd.Run() }()
	}
	for range cmds {
		if err := <-errs; err != nil {
			b.StopTimer()
			for k := range cmds {
				b.Logf("send %d: %s", k, stderrs[k].String())
			}
			b.Fatalf("pgporter send: %v\nreceiver:\n%s", err, srvErr.String())
		}
	}
	secs := time.Since(t0).Seconds() / float64(par)
	b.StopTimer()
	w1, lost1 := l.wire()
	for k := range cmds {
		lines := strings.Split(strings.TrimSpace(stdouts[k].String()), "\n")
		var res mover.SendResult
		if err := json.Unmarshal([]byte(lines[len(lines)-1]), &res); err != nil {
			b.Fatalf("send --json: %v: %q", err, stdouts[k].String())
		}
		if res.Bytes != l.total {
			b.Fatalf("send moved %d bytes of %d", res.Bytes, l.total)
		}
		path, _ := json.Marshal(res.Path)
		b.Logf("run %d pgporter (send %d of %d): %.1fs; chunk frames %d, reconnects %d, udp buffers %d/%d; path %s",
			i, k+1, par, res.Seconds, res.WireBytes, res.Reconnects, res.UDPRcvBuf, res.UDPSndBuf, path)
	}
	b.Logf("run %d pgporter: %.2fs per tree, %.2f MB/s of dump, wire %d per tree, link lost %d packets",
		i, secs, float64(l.total)/1e6/secs, (w1-w0)/int64(par), lost1-lost0)
	b.StartTimer()
	return linkRun{secs: secs, wire: (w1 - w0) / int64(par)}
}

// rsync moves the tree with rsync -z (zstd level 1) to the daemon.
func (l *linkBench) rsync(b *testing.B, i int) linkRun {
	b.StopTimer()
	url := fmt.Sprintf("rsync://%s/bench/rs%d/", l.recv.AddrPort(linkBenchRsyncPort), i)
	cmd := l.send.Command(context.Background(), "rsync", "-a", "-z", "--compress-choice=zstd", "--compress-level=1", l.src+"/", url)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	w0, lost0 := l.wire()
	b.StartTimer()
	t0 := time.Now()
	err := cmd.Run()
	secs := time.Since(t0).Seconds()
	b.StopTimer()
	w1, lost1 := l.wire()
	if err != nil {
		b.Fatalf("rsync: %v\n%s", err, out.String())
	}
	b.Logf("run %d rsync -z: %.2fs, %.2f MB/s of dump, wire %d, link lost %d packets", i, secs, float64(l.total)/1e6/secs, w1-w0, lost1-lost0)
	b.StartTimer()
	return linkRun{secs: secs, wire: w1 - w0}
}

// linkBenchTree writes about size bytes shaped like pg_dump -Fd -Z0 output
// of a mixed database: pgbench_accounts-like rows (zstd shrinks them about
// 10x), documents of md5 text, jsonb and repeated words (about 4x), and a
// table of random hex (about 2x); a toc.dat. It returns the total size.
func linkBenchTree(b *testing.B, dir string, size int) int64 {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		b.Fatal(err)
	}
	rng := rand.New(rand.NewPCG(16, 4))
	words := []string{"lorem ", "ipsum ", "dolor ", "sit "}
	kinds := []string{"alpha", "beta", "gamma", "delta", "epsilon"}
	gens := []func(buf *bytes.Buffer, row int){
		func(buf *bytes.Buffer, row int) {
			fmt.Fprintf(buf, "%d\t%d\t%d\t%s\n", row, rng.IntN(50)+1, rng.IntN(100000)-50000, strings.Repeat(" ", 84))
		},
		func(buf *bytes.Buffer, row int) {
			fmt.Fprintf(buf, "%d\t%016x%016x\t{\"k\": %d, \"w\": \"%s\"}\t%s\n", row, rng.Uint64(), rng.Uint64(), row%1000, kinds[row%5], strings.Repeat(words[row%4], 8))
		},
		func(buf *bytes.Buffer, row int) {
			fmt.Fprintf(buf, "%d\t%016x%016x%016x%016x\n", row, rng.Uint64(), rng.Uint64(), rng.Uint64(), rng.Uint64())
		},
	}
	shares := []int{4, 4, 2} // tenths of size
	var total int64
	for k, gen := range gens {
		var buf bytes.Buffer
		for row := 0; buf.Len() < size*shares[k]/10; row++ {
			gen(&buf, row)
		}
		if err := os.WriteFile(filepath.Join(dir, fmt.Sprintf("%d.dat", 3001+k)), buf.Bytes(), 0o644); err != nil {
			b.Fatal(err)
		}
		total += int64(buf.Len())
	}
	toc := bytes.Repeat([]byte("toc entry\n"), 2000)
	if err := os.WriteFile(filepath.Join(dir, "toc.dat"), toc, 0o644); err != nil {
		b.Fatal(err)
	}
	return total + int64(len(toc))
}
