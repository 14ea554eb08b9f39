package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"
	"testing"

	"github.com/rogpeppe/go-internal/testscript"

	"github.com/pgporter/pgporter/chunkstore/crypt"
	"github.com/pgporter/pgporter/internal/s3test"
	"github.com/pgporter/pgporter/internal/testsupport"
)

// testMainEnv, set to 1 in a child's environment, makes the test binary run
// the real CLI: kill_test.go starts senders and receivers that way, so they
// are real processes it can SIGKILL without building anything extra.
const testMainEnv = "PGPORTER_TEST_MAIN"

// testSelfEnv hands a child running the CLI the test's selfCommand.
const testSelfEnv = "PGPORTER_TEST_SELF"

func TestMain(m *testing.M) {
	// New key files (repo init, key add) derive with a little more than the
	// floor (MinKDF, which generated keys keep), not DefaultKDF: these tests
	// are of the commands, and DefaultKDF's half second (one to two on a
	// busy machine), once per command and per key file tried, made the
	// encrypted repository's tests a minute and a half of the package's
	// time. crypt's tests and BenchmarkKDF cover DefaultKDF. Set here, the
	// children re-executed as the CLI (below) derive the same way.
	crypt.DefaultKDF = crypt.MinKDF
	crypt.DefaultKDF.Time++
	if os.Getenv(testMainEnv) == "1" {
		// A child running the CLI (a mover serve): the restore_command of
		// the instances it starts runs the copy of this binary that the
		// test made for the instance's OS user (archivingCluster).
		selfCommand = os.Getenv(testSelfEnv)
		os.Exit(mainCode())
	}
	// A fresh machine's mounts (no fusectl): a killed export stuck on its
	// own FUSE mount must be freed by retry, cancel and reclaim there.
	testsupport.FreshMounts()
	// testscript re-executes this binary as "pgporter" for the scripts.
	// The bucket tests' shared S3 server stops after the tests.
	testscript.Main(s3test.Wrap(m), map[string]func(){
		"pgporter": func() { os.Exit(mainCode()) },
	})
}

// mainCode is main without os.Exit: a signal context around run.
func mainCode() int {
	quietQUICBufferWarning()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	return run(ctx, os.Args[1:], os.Stdout, os.Stderr)
}
