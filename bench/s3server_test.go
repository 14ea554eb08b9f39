package bench

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/stretchr/testify/require"

	"github.com/pgporter/pgporter/internal/testsupport"
)

func TestParseExports(t *testing.T) {
	out := []byte(`export AWS_ENDPOINT_URL=http://127.0.0.1:23000
export AWS_ACCESS_KEY_ID=pgporter
export AWS_SECRET_ACCESS_KEY=pgporter-secret
export AWS_REGION=us-east-1
export PGPORTER_S3_TLS_ENDPOINT=https://127.0.0.1:23001
export PGPORTER_S3_CA_FILE=/tmp/s3/tls/cert.pem
`)
	vars, err := parseExports(out, s3ServerVars...)
	require.NoError(t, err)
	require.Equal(t, "http://127.0.0.1:23000", vars["AWS_ENDPOINT_URL"])
	require.Equal(t, "pgporter-secret", vars["AWS_SECRET_ACCESS_KEY"])
	require.Equal(t, "/tmp/s3/tls/cert.pem", vars["PGPORTER_S3_CA_FILE"])

	s := &s3Server{vars: vars}
	require.Equal(t, []string{"AWS_ENDPOINT_URL=http://127.0.0.1:23000", "AWS_ACCESS_KEY_ID=pgporter",
		"AWS_SECRET_ACCESS_KEY=pgporter-secret", "AWS_REGION=us-east-1"}, s.Env())
	host, port, err := s.TLSHostPort()
	require.NoError(t, err)
	require.Equal(t, "127.0.0.1", host)
	require.Equal(t, 23001, port)

	// Other lines (a build's progress) are not variables; a missing or
	// empty variable is an error.
	vars, err = parseExports([]byte("s3-server: building\nexport A=1\n  export B=2=3\n"), "A", "B")
	require.NoError(t, err)
	require.Equal(t, map[string]string{"A": "1", "B": "2=3"}, vars)
	_, err = parseExports([]byte("export A=1\nexport B=\n"), "A", "B")
	require.ErrorContains(t, err, "no B")
	_, err = parseExports([]byte("export A=1\n"), "A", "C")
	require.ErrorContains(t, err, "no C")

	s = &s3Server{vars: map[string]string{"PGPORTER_S3_TLS_ENDPOINT": "https://127.0.0.1"}}
	_, _, err = s.TLSHostPort()
	require.ErrorContains(t, err, "no port")
}

func TestParsePID(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want int
	}{{"1234\n", 1234}, {"  77 ", 77}, {"", 0}, {"0\n", 0}, {"-5", 0}, {"12 13", 0}, {"abc", 0}} {
		t.Run(tc.in, func(t *testing.T) {
			pid, err := parsePID([]byte(tc.in))
			if tc.want == 0 {
				require.ErrorContains(t, err, "malformed PID file")
				return
			}
			require.NoError(t, err)
			require.Equal(t, tc.want, pid)
		})
	}
}

func TestPgBackRestS3Settings(t *testing.T) {
	dir := t.TempDir()
	p, err := newPgBackRestOn(dir, pgBackRestServer{PGData: "/pg"}, &pgBackRestS3{
		Host: "127.0.0.1", Port: 23001, Bucket: "b-1", Key: "k", Secret: "s", Region: "us-east-1",
	}, "", nil)
	require.NoError(t, err)
	require.Empty(t, p.repo, "no local repository")
	require.NoDirExists(t, filepath.Join(dir, "repo"))
	conf, err := os.ReadFile(p.conf)
	require.NoError(t, err)
	for _, line := range []string{"repo1-type=s3", "repo1-path=/repo", "repo1-s3-endpoint=127.0.0.1", "repo1-storage-port=23001",
		"repo1-s3-bucket=b-1", "repo1-s3-key=k", "repo1-s3-key-secret=s", "repo1-s3-region=us-east-1",
		"repo1-s3-uri-style=path", "repo1-storage-verify-tls=n", "compress-type=zst", "pg1-path=/pg"} {
		require.Contains(t, strings.Split(string(conf), "\n"), line)
	}
	require.NotContains(t, string(conf), "repo1-path="+filepath.Join(dir, "repo"))
	require.NotContains(t, string(conf), "cipher", "plain unless asked")

	p, err = newPgBackRestOn(t.TempDir(), pgBackRestServer{PGData: "/pg"}, nil, "pass", nil)
	require.NoError(t, err)
	conf, err = os.ReadFile(p.conf)
	require.NoError(t, err)
	for _, line := range []string{"repo1-path=" + p.repo, "repo1-cipher-type=aes-256-cbc", "repo1-cipher-pass=pass"} {
		require.Contains(t, strings.Split(string(conf), "\n"), line)
	}
}

// TestS3Server starts the scenario's S3 server through scripts/s3-server
// and checks what the scenario measures with it: the size of a repository
// (only the objects under its prefix), the server's CPU time, and that a
// bucket with objects is removed and the server stopped. CreateBucket's
// one byte is outside every repository's prefix.
func TestS3Server(t *testing.T) {
	script, err := findS3Script()
	require.NoError(t, err)
	out, err := exec.Command(script, "path").Output()
	require.NoError(t, err)
	if _, err := os.Stat(strings.TrimSpace(string(out))); err != nil {
		testsupport.SkipOrFail(t, "no SeaweedFS weed binary: build it with make s3-server")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	dir := t.TempDir()
	srv, err := startS3Server(ctx, dir)
	require.NoError(t, err)
	stopped := false
	t.Cleanup(func() {
		if !stopped {
			_ = srv.Close()
		}
	})
	cpu0, err := srv.CPU()
	require.NoError(t, err)

	const bucket = "size-test"
	require.NoError(t, srv.CreateBucket(ctx, bucket))
	objects := map[string]int{"repo/config": 10, "repo/packs/a.pack": 2 << 20, "repo/points/x.json": 300, "other/y": 5000, "repox": 7}
	for key, n := range objects {
		_, err := srv.client.PutObject(ctx, &s3.PutObjectInput{Bucket: aws.String(bucket), Key: aws.String(key), Body: bytes.NewReader(make([]byte, n))})
		require.NoError(t, err, key)
	}
	size, count, err := srv.Size(ctx, bucket, "repo/")
	require.NoError(t, err)
	require.Equal(t, int64(10+2<<20+300), size, "the objects under repo/ only")
	require.Equal(t, 3, count)
	size, count, err = srv.Size(ctx, bucket, "")
	require.NoError(t, err)
	require.Equal(t, int64(10+2<<20+300+5000+7+1), size, "and CreateBucket's byte")
	require.Equal(t, 6, count)

	cpu1, err := srv.CPU()
	require.NoError(t, err)
	require.Greater(t, cpu1, cpu0, "the server worked for the puts")

	require.NoError(t, srv.RemoveBucket(ctx, bucket))
	_, _, err = srv.Size(ctx, bucket, "")
	require.Error(t, err, "the bucket is gone")

	pid := srv.pid
	require.NoError(t, srv.Close())
	stopped = true
	require.NoFileExists(t, filepath.Join(dir, "weed.pid"))
	_, err = os.Stat("/proc/" + strconv.Itoa(pid))
	require.ErrorIs(t, err, os.ErrNotExist, "weed stopped")
}
