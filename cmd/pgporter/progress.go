package main

import (
	"context"
	"io"
	"os"
	"time"

	"github.com/vbauerster/mpb/v8"
	"github.com/vbauerster/mpb/v8/decor"
	"golang.org/x/term"
)

// isTTY reports whether w is a terminal: progress bars only go there.
func isTTY(w io.Writer) bool {
	f, ok := w.(*os.File)
	return ok && term.IsTerminal(int(f.Fd()))
}

// byteBar is a progress bar of bytes with rate and ETA, drawn on a terminal
// only; on anything else its methods do nothing.
type byteBar struct {
	p   *mpb.Progress
	bar *mpb.Bar
}

func newByteBar(ctx context.Context, w io.Writer, name string, total int64) *byteBar {
	if !isTTY(w) {
		return &byteBar{}
	}
	p := mpb.NewWithContext(ctx, mpb.WithOutput(w), mpb.WithWidth(40), mpb.WithRefreshRate(200*time.Millisecond))
	bar := p.AddBar(total,
		mpb.PrependDecorators(decor.Name(name+" ", decor.WCSyncSpaceR), decor.CountersKibiByte("% .1f / % .1f")),
		mpb.AppendDecorators(decor.AverageSpeed(decor.SizeB1024(0), " % .1f"), decor.Name("  ETA "), decor.AverageETA(decor.ET_STYLE_GO)),
	)
	return &byteBar{p: p, bar: bar}
}

func (b *byteBar) set(n int64) {
	if b.bar != nil {
		b.bar.SetCurrent(n)
	}
}

// done completes (ok) or drops the bar and waits for the last render.
func (b *byteBar) done(ok bool) {
	if b.bar == nil {
		return
	}
	if ok {
		b.bar.SetTotal(-1, true)
	} else {
		b.bar.Abort(false)
	}
	b.p.Wait()
}
