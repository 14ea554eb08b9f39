package testsupport

import (
	"fmt"
	"runtime"
	"testing"
)

// Recorder is a testing.TB that records Fatal and Skip instead of acting
// on the real test: for testing what a test kit does when a component is
// missing (RequirePG, s3test.Start).
type Recorder struct {
	testing.TB
	FatalMsg, SkipMsg string
}

func (r *Recorder) Helper() {}

func (r *Recorder) Fatal(args ...any) {
	r.FatalMsg = fmt.Sprint(args...)
	runtime.Goexit()
}

func (r *Recorder) Skip(args ...any) {
	r.SkipMsg = fmt.Sprint(args...)
	runtime.Goexit()
}

// Run calls f with r on a goroutine of its own, as Goexit needs.
func (r *Recorder) Run(f func(testing.TB)) {
	done := make(chan struct{})
	go func() {
		defer close(done)
		f(r)
	}()
	<-done
}
