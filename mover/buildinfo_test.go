package mover

import (
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/pgporter/pgporter/internal/buildinfo"
	"github.com/pgporter/pgporter/protocol"
	"github.com/stretchr/testify/require"
)

// TestBuildInfo: a mover names its build in Hello and in its metrics, and
// names the peer's build, cut and quoted, when the versions do not meet.
func TestBuildInfo(t *testing.T) {
	bi := buildinfo.Get()
	require.Equal(t, "pgporter "+bi.Short(), hello().Software)

	r := startReceiver(t, ServerOptions{})
	rec := httptest.NewRecorder()
	r.srv.MetricsHandler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	require.Contains(t, rec.Body.String(), `pgporter_build_info{commit="`+bi.Commit+`",goversion="`+bi.GoVersion+`",version="`+bi.Version+`"} 1`)

	var c controlStream
	hostile := "evil\x1b[2J\xff" + strings.Repeat("x", 500)
	err := c.checkHello(&protocol.Hello{Version: protocol.MinVersion - 1, MinVersion: 1, Software: hostile})
	require.ErrorIs(t, err, protocol.ErrVersion)
	require.Contains(t, err.Error(), `the peer ("evil\x1b[2J?xxx`)
	require.NotContains(t, err.Error(), "\x1b", "control characters are escaped")
	require.Less(t, len(c.peerSoftware), 100, "cut to 64 bytes, then quoted")
	require.Contains(t, err.Error(), Software)
}
