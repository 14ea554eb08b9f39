package objstore_test

import (
	"testing"

	"go.uber.org/goleak"
)

// The SDK's HTTP clients keep idle connections, each with its two
// goroutines, until the process ends; nothing of this package's own may be
// left.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m,
		goleak.IgnoreTopFunction("net/http.(*persistConn).readLoop"),
		goleak.IgnoreTopFunction("net/http.(*persistConn).writeLoop"),
	)
}
