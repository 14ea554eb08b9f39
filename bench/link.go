package bench

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"time"
)

// Link is two network-namespace hosts, sender and receiver, joined by a veth
// pair shaped with tc tbf at the same rate in each direction. Its addresses
// are 198.19.17.1 and .2/30 (198.18.0.0/15 is reserved for benchmarks;
// internal/testsupport's hosts use 198.18.1-254.0/24, and each namespace
// has its own addresses, so parallel runs do not collide). Both veth ends are created inside the namespaces: the root
// namespace is never touched.
type Link struct {
	Sender, Receiver string // namespace names
	SenderAddr       string
	ReceiverAddr     string
	SenderCPUs       string // taskset -c lists
	ReceiverCPUs     string
}

// LinkOptions configures NewLink.
type LinkOptions struct {
	Rate         string // tc rate, e.g. "1gbit"; empty means no shaping
	SenderCPUs   string // default "0"
	ReceiverCPUs string // default "1"
	// TCPCongestion, when set, is the TCP congestion control of the end
	// hosts of a WANLink (net.ipv4.tcp_congestion_control in each
	// namespace), e.g. "reno"; empty keeps the machine's default. A
	// namespace other than the first may only pick one that
	// net.ipv4.tcp_allowed_congestion_control lists (here reno and bbr).
	TCPCongestion string
}

const (
	linkSenderAddr   = "198.19.17.1"
	linkReceiverAddr = "198.19.17.2"
	linkDev          = "eth0"
)

// RequireLinkTools returns an error naming the first program a Link and the
// LAN tools need that is missing, or that this process is not root.
func RequireLinkTools() error {
	if os.Geteuid() != 0 {
		return errors.New("network namespaces need root")
	}
	for _, p := range []string{"ip", "tc", "taskset", "ss", "rsync", "zstd", "nc", "tar", "bash", "/usr/bin/time"} {
		if _, err := exec.LookPath(p); err != nil {
			return fmt.Errorf("%s is needed (scripts/setup installs it): %w", p, err)
		}
	}
	return nil
}

// NewLink creates the two namespaces and the shaped veth pair between them.
// On error it removes what it made; otherwise the caller calls Close.
func NewLink(ctx context.Context, o LinkOptions) (_ *Link, err error) {
	if o.SenderCPUs == "" {
		o.SenderCPUs = "0"
	}
	if o.ReceiverCPUs == "" {
		o.ReceiverCPUs = "1"
	}
	base := fmt.Sprintf("pgp-bench17-%d-%d", os.Getpid(), time.Now().UnixNano()%1e6)
	l := &Link{
		Sender: base + "-s", Receiver: base + "-r",
		SenderAddr: linkSenderAddr, ReceiverAddr: linkReceiverAddr,
		SenderCPUs: o.SenderCPUs, ReceiverCPUs: o.ReceiverCPUs,
	}
	if err := run(ctx, "ip", "netns", "add", l.Sender); err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			err = errors.Join(err, l.Close())
		}
	}()
	if err := run(ctx, "ip", "netns", "add", l.Receiver); err != nil {
		return nil, err
	}
	steps := [][]string{
		{"ip", "-n", l.Sender, "link", "add", linkDev, "type", "veth", "peer", "name", linkDev, "netns", l.Receiver},
		{"ip", "-n", l.Sender, "addr", "add", l.SenderAddr + "/30", "dev", linkDev},
		{"ip", "-n", l.Receiver, "addr", "add", l.ReceiverAddr + "/30", "dev", linkDev},
	}
	for _, ns := range []string{l.Sender, l.Receiver} {
		steps = append(steps,
			[]string{"ip", "-n", ns, "link", "set", "lo", "up"},
			[]string{"ip", "-n", ns, "link", "set", linkDev, "up"})
		if o.Rate != "" {
			// A 256 kB bucket, 50 ms of queue.
			steps = append(steps, []string{"tc", "-n", ns, "qdisc", "add", "dev", linkDev, "root", "tbf",
				"rate", o.Rate, "burst", "256kb", "latency", "50ms"})
		}
	}
	for _, s := range steps {
		if err := run(ctx, s[0], s[1:]...); err != nil {
			return nil, fmt.Errorf("setting up the link: %w", err)
		}
	}
	return l, nil
}

// Close deletes both namespaces, which destroys the veth pair. Processes
// still running in them must have been stopped by their owners first.
func (l *Link) Close() error {
	var errs []error
	for _, ns := range []string{l.Sender, l.Receiver} {
		if err := run(context.Background(), "ip", "netns", "del", ns); err != nil && !strings.Contains(err.Error(), "No such file") {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// SenderCmd returns a command that runs name in the sender's namespace on
// the sender's CPUs. 'ip netns exec' and taskset exec in place, so the
// command's PID is the program's, and wait4 accounts for the CPU of its
// whole tree. When peak is not empty, GNU time runs name and writes its peak
// RSS there (readPeakRSS): wait4's own maxrss is no use, because Go starts
// children with CLONE_VM and the kernel charges the harness's peak to them.
func (l *Link) SenderCmd(ctx context.Context, peak, name string, args ...string) *exec.Cmd {
	return nsCmd(ctx, l.Sender, l.SenderCPUs, peak, name, args...)
}

// ReceiverCmd is SenderCmd on the receiving side.
func (l *Link) ReceiverCmd(ctx context.Context, peak, name string, args ...string) *exec.Cmd {
	return nsCmd(ctx, l.Receiver, l.ReceiverCPUs, peak, name, args...)
}

func nsCmd(ctx context.Context, ns, cpus, peak, name string, args ...string) *exec.Cmd {
	argv := []string{"netns", "exec", ns, "taskset", "-c", cpus}
	if peak != "" {
		argv = append(argv, "/usr/bin/time", "-f", "%M", "-o", peak)
	}
	cmd := exec.CommandContext(ctx, "ip", append(append(argv, name), args...)...)
	// A harness killed before its cleanup must not leave daemons behind.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	cmd.Cancel = func() error { return cmd.Process.Signal(syscall.SIGTERM) }
	cmd.WaitDelay = 10 * time.Second
	return cmd
}

// SenderTxBytes returns the bytes the sender's end of the link has sent.
func (l *Link) SenderTxBytes(ctx context.Context) (int64, error) {
	out, err := exec.CommandContext(ctx, "ip", "-n", l.Sender, "-s", "-j", "link", "show", "dev", linkDev).Output()
	if err != nil {
		return 0, fmt.Errorf("reading link counters: %w", err)
	}
	return parseTxBytes(out)
}

// parseTxBytes reads stats64.tx.bytes from 'ip -s -j link show' output.
func parseTxBytes(js []byte) (int64, error) {
	var links []struct {
		Stats64 struct {
			TX struct {
				Bytes int64 `json:"bytes"`
			} `json:"tx"`
		} `json:"stats64"`
	}
	if err := json.Unmarshal(js, &links); err != nil {
		return 0, fmt.Errorf("parsing link counters: %w", err)
	}
	if len(links) != 1 {
		return 0, fmt.Errorf("parsing link counters: %d links", len(links))
	}
	return links[0].Stats64.TX.Bytes, nil
}

// run runs a short command and returns its output in the error on failure.
func run(ctx context.Context, name string, args ...string) error {
	out, err := exec.CommandContext(ctx, name, args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}
