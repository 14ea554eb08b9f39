package main

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"time"

	"github.com/pgporter/pgporter/internal/bytesize"
	"github.com/pgporter/pgporter/mover"
	"github.com/spf13/cobra"
)

type sendOpts struct {
	to, peer, bwlimit string
	json              bool
	o                 mover.SendOptions
}

func newSendCmd(g *globals) *cobra.Command {
	var so sendOpts
	c := &cobra.Command{
		Use:   "send --to ADDR --peer PEER_ID SRC DEST",
		Short: "Send a directory or a file to a target mover, resumably",
		Long: `Send SRC, a directory or a regular file, to DEST on the mover at ADDR
(its peer ID is PEER_ID). DEST is an absolute path on the receiving host,
inside one of its --root directories, and is always a directory:

  SRC a directory   its tree becomes DEST (as 'rsync -a SRC/ DEST')
  SRC a file        DEST is created holding it under its own name,
                    DEST/NAME (as 'rsync SRC DEST/')

DEST also gets pgporter-manifest.json, which 'pgporter verify DEST' checks.
Directories keep their modes and times, and empty ones are sent; received modes are
masked to 0755 (nothing setuid, setgid, sticky or writable by group or
others) and directories keep rwx for the receiving mover. A SRC that is a
symbolic link is resolved first: what it points at is sent (a file under its
own name); links inside a tree are never followed.

The tree is cut into content-defined chunks addressed by BLAKE3; the receiver
asks only for the chunks it does not already hold (from an interrupted run of
the same command, or from earlier transfers), verifies each one, and renames
DEST.partial to DEST once every file has been verified. An existing DEST is
refused (exit 6) unless --overwrite is given: then the old DEST is moved
aside when the new one is complete, and removed once it is in place.

Symbolic links, devices, FIFOs and sockets are not sent: a SRC holding any is
refused before anything is sent, with the list of all of them, unless
--skip-special is given; then each one left out is listed on stderr (and in
"skipped" of --json), and exit code 0 means everything else was sent.

If the transfer is interrupted (network, either side killed), rerun the same
command: it resumes and sends only what the receiver does not hold durably.
Short network drops are ridden out by reconnecting (see --retry-for).

Sizes are printed in IEC units (KiB, MiB, GiB); --bwlimit takes K, M, G, T
as powers of 1024.

Examples:
  pgporter send --to 10.0.0.7:7448 --peer ABCDEFG-... /var/tmp/dump /srv/dumps/db1
  pgporter send --to 10.0.0.7:7448 --peer ABCDEFG-... base.tar /srv/dumps/base
      (the file arrives as /srv/dumps/base/base.tar)`,
		Args: func(_ *cobra.Command, args []string) error {
			if len(args) != 2 {
				return usagef("send takes SRC and DEST, got %d arguments", len(args))
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			so.o.Src, so.o.Dest = args[0], args[1]
			return runSend(cmd, g, so)
		},
	}
	f := c.Flags()
	f.StringVar(&so.to, "to", "", "address of the receiving mover (host:port)")
	f.StringVar(&so.peer, "peer", "", "peer ID of the receiving mover ('pgporter mover id' there)")
	f.BoolVar(&so.json, "json", false, "print a JSON summary, and nothing else, on stdout")
	f.IntVar(&so.o.Streams, "streams", 4, "parallel QUIC data streams per connection")
	f.IntVar(&so.o.Connections, "connections", 0, "QUIC connections per transfer: 0 (auto) adds one each quarter second, up to 8, while the link loses packets; a receiver older than protocol 5 takes one")
	f.StringVar(&so.o.LossRepair, "loss-repair", "auto", "frame datagrams with a parity per group so that a single lost packet is rebuilt by the receiver instead of halving QUIC's congestion window: auto (on the connections added because the link loses packets or its round trip is 10 ms or more, and on the first one when the last send to the peer needed it), on (every connection; the receiver must speak protocol 11, or the first connection is never answered), off")
	f.StringVar(&so.o.Compression, "compress", "auto", "compression level: auto (adapts to whichever of the CPU and the link limits, climbing only to a level that a sample of chunks shows to save bytes), none, s2, fast4, fast1, fastest, default, better, best (s2 is the S2 codec, for receivers speaking protocol 6 or later; the others are zstd, fast4 and fast1 its --fast=4 and --fast=1)")
	f.StringVar(&so.bwlimit, "bwlimit", "", "limit on wire bytes per second for the whole transfer, e.g. 50M")
	f.DurationVar(&so.o.RetryFor, "retry-for", 2*time.Minute, "how long to keep reconnecting after a network failure (0 = default, negative = never); a mover that never answered is tried for 10s at most")
	f.StringVar(&so.o.TransferID, "id", "", "transfer ID (default: derived from SRC, DEST and the peer, so a rerun resumes)")
	f.BoolVar(&so.o.Overwrite, "overwrite", false, "replace an existing directory at DEST once the new one is complete (the receiver must speak protocol 8)")
	f.BoolVar(&so.o.SkipSpecial, "skip-special", false, "leave out symbolic links, devices, FIFOs and sockets, listing each on stderr, instead of refusing SRC")
	return c
}

func runSend(cmd *cobra.Command, g *globals, so sendOpts) error {
	if so.to == "" || so.peer == "" {
		return usagef("send needs --to ADDR and --peer PEER_ID")
	}
	if err := mover.ValidateAddr(so.to); err != nil {
		return usageError{fmt.Errorf("--to: %w", err)}
	}
	peer, err := mover.ParsePeerID(so.peer)
	if err != nil {
		return usageError{fmt.Errorf("--peer: %w", err)}
	}
	if so.bwlimit != "" {
		if so.o.BWLimit, err = bytesize.Parse(so.bwlimit); err != nil {
			return usageError{fmt.Errorf("--bwlimit: %w", err)}
		}
	}
	switch {
	case so.o.Streams < 1:
		return usagef("--streams %d: at least 1 data stream per connection", so.o.Streams)
	case so.o.Connections < 0:
		return usagef("--connections %d: 0 (auto) or a fixed number of connections", so.o.Connections)
	}
	if err := so.o.Validate(); err != nil {
		return usageError{err}
	}
	// A SRC that is not there was exit 1 with lstat's words.
	if _, err := os.Lstat(so.o.Src); errors.Is(err, fs.ErrNotExist) {
		return mark(fmt.Errorf("SRC %s: no such file or directory", so.o.Src), errNotFound)
	}
	s, err := mover.NewSender(g.home, g.log)
	if err != nil {
		return err
	}
	defer s.Close()
	ctx := cmd.Context()
	var bar *byteBar
	so.o.Progress = func(p mover.SendProgress) {
		if bar == nil {
			bar = newByteBar(ctx, g.stderr, "send", p.Total)
		}
		bar.set(p.Durable)
	}
	res, err := s.Send(ctx, so.to, peer, so.o)
	if bar != nil {
		bar.done(err == nil)
	}
	if _, ok := errors.AsType[*mover.SpecialFilesError](err); ok {
		return fmt.Errorf("send %s to %s: %w; nothing was sent: remove them, or pass --skip-special to send everything else", so.o.Src, so.o.Dest, err)
	}
	if err != nil {
		return fmt.Errorf("send %s to %s: %w", so.o.Src, so.o.Dest, err)
	}
	for _, e := range res.Skipped {
		fmt.Fprintf(g.stderr, "skipped %s (%s)\n", e.Path, e.Kind)
	}
	if res.AlreadyComplete && res.ChunksSent == 0 {
		fmt.Fprintf(g.stdout, "%s is already complete at the receiver: nothing to send\n", res.Dest)
	} else {
		ratio := 0.0
		if res.WireBytes > 0 {
			ratio = float64(res.Bytes) / float64(res.WireBytes)
		}
		fmt.Fprintf(g.stdout, "sent %s: %d files, %s in %.1fs (%s); chunks %d sent, %d skipped of %d; wire %s (%.1fx)\n",
			res.Dest, res.Files, bytesize.Format(res.Bytes), res.Seconds, bytesize.Rate(res.Bytes, res.Seconds),
			res.ChunksSent, res.ChunksSkipped, res.ChunksTotal, bytesize.Format(res.WireBytes), ratio)
		if lv := res.LevelsText(); lv != "" {
			fmt.Fprintf(g.stdout, "chunks by compression level: %s\n", lv)
		}
	}
	if so.json {
		return g.writeJSON(res)
	}
	return nil
}
