package staging

import (
	"os"
	"testing"

	"github.com/pgporter/pgporter/internal/testsupport"
)

// TestMain runs the package's tests with a fresh machine's mounts (no
// fusectl): freeing a process stuck on its own FUSE mount must work there.
func TestMain(m *testing.M) {
	testsupport.FreshMounts()
	os.Exit(m.Run())
}
