package bench

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/aws-sdk-go-v2/service/s3/types"
)

// s3Server is the project's test S3 server (SeaweedFS, scripts/s3-server)
// with its data in a scratch directory, started for a scenario and stopped
// by its Close.
type s3Server struct {
	script string // scripts/s3-server
	dir    string
	// vars are the lines scripts/s3-server start printed, without
	// "export ": AWS_ENDPOINT_URL (HTTP), AWS_ACCESS_KEY_ID,
	// AWS_SECRET_ACCESS_KEY, AWS_REGION, PGPORTER_S3_TLS_ENDPOINT (HTTPS).
	vars   map[string]string
	pid    int // weed's, for its CPU time
	client *s3.Client
}

// s3ServerVars are the variables scripts/s3-server must print.
var s3ServerVars = []string{"AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_REGION", "PGPORTER_S3_TLS_ENDPOINT"}

// findS3Script finds scripts/s3-server in the module's root at or above the
// working directory, where the harness runs (go run ./bench/cmd/...) and
// its tests do (their package's directory).
func findS3Script() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			p := filepath.Join(dir, "scripts", "s3-server")
			if _, err := os.Stat(p); err != nil {
				return "", fmt.Errorf("the S3 server's script: %w", err)
			}
			return p, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("no go.mod above the working directory: run the harness in the repository")
		}
		dir = parent
	}
}

// RequireS3Server returns an error when the S3 server cannot start here:
// no scripts/s3-server, or no weed binary built and no go to build it.
func RequireS3Server() error {
	script, err := findS3Script()
	if err != nil {
		return err
	}
	out, err := exec.Command(script, "path").Output()
	if err != nil {
		return fmt.Errorf("%s path: %w", script, err)
	}
	if fi, err := os.Stat(strings.TrimSpace(string(out))); err == nil && fi.Mode()&0o111 != 0 {
		return nil
	}
	if _, err := exec.LookPath("go"); err != nil {
		return errors.New("the S3 server needs SeaweedFS's weed (make s3-server) or go to build it")
	}
	return nil
}

// startS3Server runs scripts/s3-server start DIR (which builds weed the first
// time, several minutes) and connects a client to its HTTP endpoint.
func startS3Server(ctx context.Context, dir string) (_ *s3Server, err error) {
	script, err := findS3Script()
	if err != nil {
		return nil, err
	}
	s := &s3Server{script: script, dir: dir}
	var stdout, stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, script, "start", dir)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	runErr := cmd.Run()
	// A start that failed half-way may have left weed running.
	defer func() {
		if err != nil {
			err = errors.Join(err, s.Close())
		}
	}()
	if runErr != nil {
		return s, fmt.Errorf("%s start: %w: %s", script, runErr, tail(stderr.String()))
	}
	if s.vars, err = parseExports(stdout.Bytes(), s3ServerVars...); err != nil {
		return s, fmt.Errorf("%s start: %w", script, err)
	}
	b, err := os.ReadFile(filepath.Join(dir, "weed.pid"))
	if err != nil {
		return s, fmt.Errorf("the S3 server's PID: %w", err)
	}
	if s.pid, err = parsePID(b); err != nil {
		return s, fmt.Errorf("the S3 server's PID: %w", err)
	}
	s.client = s3.New(s3.Options{
		Region:       s.vars["AWS_REGION"],
		BaseEndpoint: aws.String(s.vars["AWS_ENDPOINT_URL"]),
		UsePathStyle: true,
		Credentials:  credentials.NewStaticCredentialsProvider(s.vars["AWS_ACCESS_KEY_ID"], s.vars["AWS_SECRET_ACCESS_KEY"], ""),
	})
	return s, nil
}

// parseExports reads the "export K=V" lines that scripts/s3-server start
// and env print into a map, and fails when one of want is missing or empty.
// The script prints its values unquoted, and none holds a space.
func parseExports(out []byte, want ...string) (map[string]string, error) {
	vars := map[string]string{}
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		line, ok := strings.CutPrefix(strings.TrimSpace(sc.Text()), "export ")
		if !ok {
			continue
		}
		if k, v, ok := strings.Cut(line, "="); ok {
			vars[k] = v
		}
	}
	for _, k := range want {
		if vars[k] == "" {
			return nil, fmt.Errorf("no %s in %q", k, tail(string(out)))
		}
	}
	return vars, nil
}

// parsePID reads a PID file's content: one positive number, a newline
// allowed.
func parsePID(b []byte) (int, error) {
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || pid <= 0 {
		return 0, fmt.Errorf("malformed PID file %q", b)
	}
	return pid, nil
}

// Env returns the variables a pgporter process needs to reach the server
// (the endpoint over HTTP, the credentials, the region), as "K=V".
func (s *s3Server) Env() []string {
	var env []string
	for _, k := range s3ServerVars[:4] {
		env = append(env, k+"="+s.vars[k])
	}
	return env
}

// TLSHostPort returns the host and port of the HTTPS endpoint, for a client
// that takes them apart (pgBackRest).
func (s *s3Server) TLSHostPort() (string, int, error) {
	u, err := url.Parse(s.vars["PGPORTER_S3_TLS_ENDPOINT"])
	if err != nil {
		return "", 0, fmt.Errorf("the S3 server's TLS endpoint: %w", err)
	}
	port, err := strconv.Atoi(u.Port())
	if err != nil {
		return "", 0, fmt.Errorf("the S3 server's TLS endpoint %q has no port", u)
	}
	return u.Hostname(), port, nil
}

// CPU returns the CPU-seconds weed has used so far (/proc/PID/stat).
func (s *s3Server) CPU() (float64, error) { return procCPU(s.pid) }

// bucketReadyKey is the object CreateBucket writes into a new bucket,
// outside the repositories' prefix.
const bucketReadyKey = "bench-ready"

// CreateBucket creates a bucket and writes one byte into it (bucketReadyKey).
// SeaweedFS makes a bucket's first volume at its first write, which takes
// about 0.2 s on this machine (measured: a backup of a fresh initdb into a
// new bucket 0.30 s, after such a write 0.09 s). A repository's bucket
// lives long, so that cost is not a backup's: it is paid here, untimed.
func (s *s3Server) CreateBucket(ctx context.Context, bucket string) error {
	if _, err := s.client.CreateBucket(ctx, &s3.CreateBucketInput{Bucket: aws.String(bucket)}); err != nil {
		return fmt.Errorf("creating bucket %s: %w", bucket, err)
	}
	if _, err := s.client.PutObject(ctx, &s3.PutObjectInput{Bucket: aws.String(bucket), Key: aws.String(bucketReadyKey), Body: strings.NewReader("x")}); err != nil {
		return fmt.Errorf("writing into bucket %s: %w", bucket, err)
	}
	return nil
}

// Size returns the sum of the sizes of the objects of bucket whose keys
// start with prefix, and their count: what a repository there stores.
func (s *s3Server) Size(ctx context.Context, bucket, prefix string) (size int64, objects int, err error) {
	pages := s3.NewListObjectsV2Paginator(s.client, &s3.ListObjectsV2Input{Bucket: aws.String(bucket), Prefix: aws.String(prefix)})
	for pages.HasMorePages() {
		page, err := pages.NextPage(ctx)
		if err != nil {
			return 0, 0, fmt.Errorf("listing %s/%s: %w", bucket, prefix, err)
		}
		for _, o := range page.Contents {
			size += aws.ToInt64(o.Size)
			objects++
		}
	}
	return size, objects, nil
}

// RemoveBucket deletes every object of bucket, then the bucket, so that a
// run's repository does not fill the server's disk.
func (s *s3Server) RemoveBucket(ctx context.Context, bucket string) error {
	pages := s3.NewListObjectsV2Paginator(s.client, &s3.ListObjectsV2Input{Bucket: aws.String(bucket)})
	for pages.HasMorePages() {
		page, err := pages.NextPage(ctx)
		if err != nil {
			return fmt.Errorf("listing %s: %w", bucket, err)
		}
		if len(page.Contents) == 0 {
			continue
		}
		var ids []types.ObjectIdentifier
		for _, o := range page.Contents {
			ids = append(ids, types.ObjectIdentifier{Key: o.Key})
		}
		out, err := s.client.DeleteObjects(ctx, &s3.DeleteObjectsInput{Bucket: aws.String(bucket), Delete: &types.Delete{Objects: ids, Quiet: aws.Bool(true)}})
		if err != nil {
			return fmt.Errorf("emptying %s: %w", bucket, err)
		}
		if len(out.Errors) > 0 {
			return fmt.Errorf("emptying %s: %s: %s", bucket, aws.ToString(out.Errors[0].Key), aws.ToString(out.Errors[0].Message))
		}
	}
	if _, err := s.client.DeleteBucket(ctx, &s3.DeleteBucketInput{Bucket: aws.String(bucket)}); err != nil {
		return fmt.Errorf("deleting bucket %s: %w", bucket, err)
	}
	return nil
}

// Close stops the server (scripts/s3-server stop: SIGTERM, SIGKILL after
// 5 s) and leaves its data to the caller's scratch directory.
func (s *s3Server) Close() error {
	out, err := exec.Command(s.script, "stop", s.dir).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s stop: %w: %s", s.script, err, tail(string(out)))
	}
	return nil
}
