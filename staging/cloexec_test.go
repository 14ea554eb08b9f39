package staging

import (
	"os"
	"os/exec"
	"strings"
	"testing"

	"github.com/pgporter/pgporter/chunkstore"
	"github.com/pgporter/pgporter/internal/testsupport"
	"github.com/stretchr/testify/require"
)

// TestMountDescriptorNotInherited: a process started after the mount must
// not hold /dev/fuse, or a crash of this process would leave its requests
// (postgres reading the mount) waiting forever instead of failing.
func TestMountDescriptorNotInherited(t *testing.T) {
	testsupport.RequireFUSE(t)
	tree := []chunkstore.Node{{Path: ".", Type: chunkstore.NodeDir, Mode: 0o755}}
	mountTree(t, tree, nil, MountOptions{})
	out, err := exec.Command("ls", "-l", "/proc/self/fd/").CombinedOutput()
	require.NoError(t, err, "%s", out)
	require.NotContains(t, string(out), "/dev/fuse", "a child inherited the FUSE connection")
	// The mount itself holds it.
	ents, err := os.ReadDir("/proc/self/fd")
	require.NoError(t, err)
	found := false
	for _, e := range ents {
		if l, err := os.Readlink("/proc/self/fd/" + e.Name()); err == nil && strings.Contains(l, "/dev/fuse") {
			found = true
		}
	}
	require.True(t, found, "the mount's own descriptor")
}
