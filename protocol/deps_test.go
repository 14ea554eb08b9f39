package protocol

import (
	"os/exec"
	"strings"
	"testing"
)

// TestLeafDependencies: protocol, which every peer's input passes through,
// depends on chunk identity (chunkstore/chunk) only, not on the store or the
// repository: neither pebble nor pgx, nor chunkstore itself (issue 18).
func TestLeafDependencies(t *testing.T) {
	out, err := exec.Command("go", "list", "-deps", ".").Output()
	if err != nil {
		t.Fatalf("go list -deps: %v", err)
	}
	for _, dep := range strings.Fields(string(out)) {
		if strings.Contains(dep, "cockroachdb/pebble") || strings.Contains(dep, "jackc/pgx") ||
			dep == "github.com/pgporter/pgporter/chunkstore" {
			t.Errorf("protocol depends on %s", dep)
		}
	}
}
