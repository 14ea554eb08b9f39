package main

import (
	"bytes"
	"context"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// TestMoverServeMetricsUnixSocket: metrics have no authentication, so
// 'mover serve --metrics unix:PATH' serves them on a Unix socket (mode
// 0660) that only local users with access to it reach (issue 15).
func TestMoverServeMetricsUnixSocket(t *testing.T) {
	home := t.TempDir()
	code, _, errs := runCLI(t, "mover", "init", "--home", home)
	require.Equal(t, 0, code, errs)
	sock := filepath.Join(t.TempDir(), "metrics.sock")
	srv := startProc(t, "--home", home, "mover", "serve", "--listen", "127.0.0.1:0", "--metrics", "unix:"+sock)
	srv.waitListening(t)
	fi, err := os.Stat(sock)
	require.NoError(t, err)
	require.Equal(t, os.ModeSocket, fi.Mode().Type())
	require.Equal(t, os.FileMode(0o660), fi.Mode().Perm())

	body := unixMetrics(t, sock)
	require.Contains(t, string(body), "# TYPE")
	require.Contains(t, string(body), "pgporter_mover_last_export_success_timestamp_seconds 0")
	require.NotContains(t, srv.stderr.String(), "warning: --metrics")

	// Each path answers its own (issue 19): every path used to be the metrics.
	code, body = unixGet(t, sock, "/healthz")
	require.Equal(t, http.StatusOK, code)
	require.Equal(t, "ok\n", string(body))
	code, body = unixGet(t, sock, "/")
	require.Equal(t, http.StatusNotFound, code)
	require.NotContains(t, string(body), "# TYPE")
	code, _ = unixGet(t, sock, "/metricsx")
	require.Equal(t, http.StatusNotFound, code)

	require.NoError(t, srv.cmd.Process.Signal(os.Interrupt))
	require.Equal(t, 0, srv.wait(t), srv.stderr.String())
	require.NoFileExists(t, sock, "the socket goes with the mover")
	require.Contains(t, srv.stderr.String(), "mover stopping")
	require.Contains(t, srv.stderr.String(), "mover stopped")
}

// TestListenMetrics: loopback addresses and Unix sockets are quiet, any
// other address is warned about; a file that is not a socket is never
// replaced.
func TestListenMetrics(t *testing.T) {
	for _, tc := range []struct {
		addr string
		warn bool
	}{
		{"127.0.0.1:0", false},
		{"[::1]:0", false},
		{"localhost:0", false},
		{"0.0.0.0:0", true},
		{":0", true},
		{"unix:" + filepath.Join(t.TempDir(), "m.sock"), false},
	} {
		t.Run(tc.addr, func(t *testing.T) {
			var stderr bytes.Buffer
			ln, err := listenMetrics(tc.addr, &stderr)
			if err != nil && tc.addr == "[::1]:0" {
				t.Skipf("no IPv6 loopback here: %v", err)
			}
			require.NoError(t, err)
			ln.Close()
			require.Equal(t, tc.warn, bytes.Contains(stderr.Bytes(), []byte("warning: --metrics")), stderr.String())
		})
	}
	for _, bad := range []string{"unix:", "unix:relative.sock", "9448"} {
		_, err := listenMetrics(bad, io.Discard)
		require.Error(t, err, bad)
	}
	file := filepath.Join(t.TempDir(), "not-a-socket")
	require.NoError(t, os.WriteFile(file, []byte("keep"), 0o644))
	_, err := listenMetrics("unix:"+file, io.Discard)
	require.Error(t, err)
	require.FileExists(t, file)
	// A socket left by a killed mover is replaced.
	stale := filepath.Join(t.TempDir(), "stale.sock")
	l, err := net.Listen("unix", stale)
	require.NoError(t, err)
	l.(*net.UnixListener).SetUnlinkOnClose(false)
	l.Close()
	ln, err := listenMetrics("unix:"+stale, io.Discard)
	require.NoError(t, err)
	ln.Close()
}

// TestStagingSettingsBelongToTheMover: across hosts the staging mover
// decides where it stages dumps and who runs PostgreSQL, so export
// --staging refuses --staging-dir and --os-user, naming the mover's flag;
// mover serve refuses a --publish-listen that is not an address.
func TestStagingSettingsBelongToTheMover(t *testing.T) {
	const peer = "127.0.0.1:7448#" + "AAAAAAA-AAAAAAA-AAAAAAA-AAAAAAA-AAAAAAA-AAAAAAA-AAAAAAA-AAAAAAA"
	for _, flag := range []string{"--staging-dir", "--os-user"} {
		code, _, errs := runCLI(t, "--home", t.TempDir(), "export", "--repo-peer", peer, "--staging", peer, "--target", peer,
			"--db", "shop", "--to", "/srv/x", flag, "/")
		require.Equal(t, exitUsage, code, errs)
		require.Contains(t, errs, flag+" is set by the staging mover ('pgporter mover serve "+flag+"' on its host)")
	}
	home := t.TempDir()
	code, _, errs := runCLI(t, "mover", "init", "--home", home)
	require.Equal(t, 0, code, errs)
	code, _, errs = runCLI(t, "--home", home, "mover", "serve", "--listen", "127.0.0.1:0", "--publish-listen", "example.com")
	require.Equal(t, exitUsage, code, errs)
	require.Contains(t, errs, "--publish-listen")
}

// unixMetrics fetches the metrics page a mover serves on the Unix socket sock.
func unixMetrics(t *testing.T, sock string) []byte {
	t.Helper()
	code, body := unixGet(t, sock, "/metrics")
	require.Equal(t, http.StatusOK, code)
	return body
}

// unixGet fetches path from the HTTP server on the Unix socket sock.
func unixGet(t *testing.T, sock, path string) (int, []byte) {
	t.Helper()
	client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "unix", sock)
		},
	}}
	resp, err := client.Get("http://metrics" + path)
	require.NoError(t, err)
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	require.NoError(t, err)
	return resp.StatusCode, body
}
