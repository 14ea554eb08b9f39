package s3test

import (
	"bytes"
	"context"
	"crypto/rand"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/aws-sdk-go-v2/service/s3/types"
	"github.com/stretchr/testify/require"

	"github.com/pgporter/pgporter/internal/testsupport"
)

const (
	objectSize = 12 << 20
	partSize   = 5 << 20 // S3's least, but for the last part
)

// One server for the checks that leave it as it was: a Start costs about
// 10 s, most of it SeaweedFS's filer waiting out other filers that a fresh
// cluster might have.
func TestServer(t *testing.T) {
	s := Start(t)
	idle, _, err := rssKiB(s.PID())
	require.NoError(t, err)
	t.Run("smoke", func(t *testing.T) { testSmoke(t, s) })
	rss, peak, err := rssKiB(s.PID())
	require.NoError(t, err)
	t.Logf("weed RSS: %d KiB idle after start, %d KiB after the transfers, %d KiB at peak", idle, rss, peak)
	t.Run("env", func(t *testing.T) { testEnvAndProfile(t, s) })
}

// The server takes a multipart upload and gives a byte range of it back,
// over plain HTTP and over TLS with its certificate verified.
func testSmoke(t *testing.T, s *Server) {
	data := make([]byte, objectSize)
	_, _ = rand.Read(data)
	for _, tc := range []struct{ name, endpoint string }{
		{"http", s.Endpoint},
		{"https", s.TLSEndpoint},
	} {
		t.Run(tc.name, func(t *testing.T) {
			require.True(t, strings.HasPrefix(tc.endpoint, tc.name+"://"), tc.endpoint)
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			defer cancel()
			c := s.Client(t, tc.endpoint)
			bucket := s.NewBucket(t)
			putMultipart(ctx, t, c, bucket, "pack", data)

			head, err := c.HeadObject(ctx, &s3.HeadObjectInput{Bucket: &bucket, Key: aws.String("pack")})
			require.NoError(t, err)
			require.Equal(t, int64(objectSize), aws.ToInt64(head.ContentLength))

			// A range across the first part's end, as a mount's read of a
			// chunk inside a pack would be.
			from, to := int64(partSize-1000), int64(partSize+3<<20)
			got := getRange(ctx, t, c, bucket, "pack", from, to)
			require.True(t, bytes.Equal(data[from:to+1], got), "range %d-%d differs", from, to)
		})
	}
}

// The export lines of scripts/s3-server are enough for the SDK's own
// configuration: the AWS variables, or a shared config profile with its
// endpoint and CA bundle.
func testEnvAndProfile(t *testing.T, s *Server) {
	bucket := s.NewBucket(t)
	home := t.TempDir()
	isolate := func(t *testing.T) {
		// Nothing of the machine's own AWS setup (this one sets
		// AWS_CA_BUNDLE) may leak in.
		for _, k := range []string{"AWS_PROFILE", "AWS_CA_BUNDLE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3",
			"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_REGION", "AWS_DEFAULT_REGION"} {
			t.Setenv(k, "")
		}
		t.Setenv("AWS_CONFIG_FILE", filepath.Join(home, "config"))
		t.Setenv("AWS_SHARED_CREDENTIALS_FILE", filepath.Join(home, "credentials"))
	}
	listed := func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		cfg, err := config.LoadDefaultConfig(ctx)
		require.NoError(t, err)
		c := s3.NewFromConfig(cfg, func(o *s3.Options) { o.UsePathStyle = true })
		out, err := c.ListBuckets(ctx, &s3.ListBucketsInput{})
		require.NoError(t, err)
		var names []string
		for _, b := range out.Buckets {
			names = append(names, aws.ToString(b.Name))
		}
		require.Contains(t, names, bucket)
	}

	t.Run("variables", func(t *testing.T) {
		isolate(t)
		for _, kv := range s.Env() {
			k, v, _ := strings.Cut(kv, "=")
			t.Setenv(k, v)
		}
		listed(t)
	})
	t.Run("profile over https", func(t *testing.T) {
		isolate(t)
		cfg := fmt.Sprintf("[profile s3test]\nregion = %s\nendpoint_url = %s\nca_bundle = %s\n", s.Region, s.TLSEndpoint, s.CAFile)
		creds := fmt.Sprintf("[s3test]\naws_access_key_id = %s\naws_secret_access_key = %s\n", s.AccessKey, s.SecretKey)
		require.NoError(t, os.WriteFile(filepath.Join(home, "config"), []byte(cfg), 0o600))
		require.NoError(t, os.WriteFile(filepath.Join(home, "credentials"), []byte(creds), 0o600))
		t.Setenv("AWS_PROFILE", "s3test")
		listed(t)
	})
}

// An object written before a crash (SIGKILL) is there after the restart, on
// the same endpoint.
func TestRestart(t *testing.T) {
	s := Start(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	bucket := s.NewBucket(t)
	data := make([]byte, 1<<20)
	_, _ = rand.Read(data)
	_, err := s.Client(t, s.Endpoint).PutObject(ctx, &s3.PutObjectInput{Bucket: &bucket, Key: aws.String("o"), Body: bytes.NewReader(data)})
	require.NoError(t, err)

	endpoint := s.Endpoint
	s.Restart(t)
	require.Equal(t, endpoint, s.Endpoint)
	got := getRange(ctx, t, s.Client(t, s.Endpoint), bucket, "o", 0, int64(len(data)-1))
	require.True(t, bytes.Equal(data, got))
}

// Without weed, Start skips the test, and fails it in CI: a skipped S3 test
// there would hide a runner that cannot build the server.
func TestStartWithoutWeed(t *testing.T) {
	t.Setenv("PGPORTER_WEED", filepath.Join(t.TempDir(), "no-weed"))

	t.Setenv("CI", "")
	r := &testsupport.Recorder{TB: t}
	r.Run(func(tb testing.TB) { Start(tb) })
	require.Contains(t, r.SkipMsg, "no SeaweedFS weed binary")
	require.Empty(t, r.FatalMsg)

	t.Setenv("CI", "true")
	r = &testsupport.Recorder{TB: t}
	r.Run(func(tb testing.TB) { Start(tb) })
	require.Contains(t, r.FatalMsg, "building weed")
	require.Empty(t, r.SkipMsg)
}

func putMultipart(ctx context.Context, t *testing.T, c *s3.Client, bucket, key string, data []byte) {
	t.Helper()
	up, err := c.CreateMultipartUpload(ctx, &s3.CreateMultipartUploadInput{Bucket: &bucket, Key: &key})
	require.NoError(t, err)
	var parts []types.CompletedPart
	for n, off := int32(1), 0; off < len(data); n, off = n+1, off+partSize {
		end := min(off+partSize, len(data))
		out, err := c.UploadPart(ctx, &s3.UploadPartInput{
			Bucket: &bucket, Key: &key, UploadId: up.UploadId,
			PartNumber: aws.Int32(n), Body: bytes.NewReader(data[off:end]),
		})
		require.NoError(t, err)
		parts = append(parts, types.CompletedPart{PartNumber: aws.Int32(n), ETag: out.ETag})
	}
	require.Len(t, parts, 3)
	_, err = c.CompleteMultipartUpload(ctx, &s3.CompleteMultipartUploadInput{
		Bucket: &bucket, Key: &key, UploadId: up.UploadId,
		MultipartUpload: &types.CompletedMultipartUpload{Parts: parts},
	})
	require.NoError(t, err)
}

// getRange reads bytes from..to (inclusive, as HTTP's Range) of an object.
func getRange(ctx context.Context, t *testing.T, c *s3.Client, bucket, key string, from, to int64) []byte {
	t.Helper()
	out, err := c.GetObject(ctx, &s3.GetObjectInput{
		Bucket: &bucket, Key: &key, Range: aws.String(fmt.Sprintf("bytes=%d-%d", from, to)),
	})
	require.NoError(t, err)
	defer out.Body.Close()
	require.Equal(t, fmt.Sprintf("bytes %d-%d/", from, to), strings.SplitAfter(aws.ToString(out.ContentRange), "/")[0])
	got, err := io.ReadAll(out.Body)
	require.NoError(t, err)
	require.Len(t, got, int(to-from+1))
	return got
}

// rssKiB returns the resident set size of process pid and its peak, from
// /proc/PID/status (VmRSS, VmHWM).
func rssKiB(pid int) (rss, peak int64, err error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) < 2 {
			continue
		}
		n, _ := strconv.ParseInt(f[1], 10, 64)
		switch f[0] {
		case "VmRSS:":
			rss = n
		case "VmHWM:":
			peak = n
		}
	}
	return rss, peak, nil
}
