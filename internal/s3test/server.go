package s3test

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	awshttp "github.com/aws/aws-sdk-go-v2/aws/transport/http"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/s3"

	"github.com/pgporter/pgporter/internal/testsupport"
)

// Server is a running SeaweedFS S3 server of one test.
type Server struct {
	Endpoint    string // http://127.0.0.1:PORT
	TLSEndpoint string // https://127.0.0.1:PORT, certified by CAFile
	CAFile      string // PEM of the self-signed certificate, its own CA
	AccessKey   string
	SecretKey   string
	Region      string
	Dir         string // data, configuration, weed.log

	script  string
	shared  bool     // Shared's: PGPORTER_S3_PORT is not for it
	env     []string // "K=V", as scripts/s3-server env prints them
	cmd     *exec.Cmd
	exited  chan struct{} // closed when cmd has been waited for
	buckets atomic.Int64
}

// Start starts a server with its data in a temporary directory of t and
// stops it at t's cleanup. It skips t when the weed binary has not been
// built (make s3-server), and fails it when CI=true and weed cannot be built.
func Start(t testing.TB) *Server {
	t.Helper()
	script := findScript(t)
	requireWeed(t, script)
	s := &Server{Dir: t.TempDir(), script: script}
	s.launch(t)
	t.Cleanup(s.kill)
	s.loadEnv(t)
	return s
}

// Restart kills the server (SIGKILL, as a crash would) and starts it again
// on the same data and ports. Reads work at once; writes may take up to 15 s
// at first, while the restarted master refuses to assign volumes for three
// heartbeat pulses and the S3 gateway retries.
func (s *Server) Restart(t testing.TB) {
	t.Helper()
	s.kill()
	s.launch(t)
}

// PID is the weed process's.
func (s *Server) PID() int { return s.cmd.Process.Pid }

// Env returns the server's variables as scripts/s3-server start exports
// them (AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY,
// AWS_REGION, PGPORTER_S3_TLS_ENDPOINT, PGPORTER_S3_CA_FILE), for a child
// process's environment.
func (s *Server) Env() []string { return append([]string(nil), s.env...) }

// SetEnv sets the server's variables (Env) in t's environment, as a user
// who ran `eval "$(scripts/s3-server start DIR)"` has them, and a fresh
// PGPORTER_CACHE_DIR, so that pgporter's code reaches the server as it
// would reach any S3 server. t must not be parallel.
func (s *Server) SetEnv(t testing.TB) {
	t.Helper()
	for _, kv := range s.env {
		k, v, _ := strings.Cut(kv, "=")
		t.Setenv(k, v)
	}
	t.Setenv("PGPORTER_CACHE_DIR", t.TempDir())
}

// Client returns a client of endpoint (s.Endpoint or s.TLSEndpoint) with the
// server's credentials and path-style addressing, trusting only the
// server's certificate. It reads nothing from the environment.
func (s *Server) Client(t testing.TB, endpoint string) *s3.Client {
	t.Helper()
	pem, err := os.ReadFile(s.CAFile)
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(pem) {
		t.Fatalf("no certificate in %s", s.CAFile)
	}
	hc := awshttp.NewBuildableClient().WithTransportOptions(func(tr *http.Transport) {
		tr.TLSClientConfig = &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS12}
	})
	return s3.New(s3.Options{
		Region:       s.Region,
		BaseEndpoint: aws.String(endpoint),
		UsePathStyle: true,
		Credentials:  credentials.NewStaticCredentialsProvider(s.AccessKey, s.SecretKey, ""),
		HTTPClient:   hc,
		// A ranged GET has no checksum of the whole object to validate; the
		// SDK would log that at every read.
		DisableLogOutputChecksumValidationSkipped: true,
	})
}

var nonBucketChars = regexp.MustCompile(`[^a-z0-9-]+`)

// NewBucket creates a bucket named after t, unique on this server.
func (s *Server) NewBucket(t testing.TB) string {
	t.Helper()
	name := strings.Trim(nonBucketChars.ReplaceAllString(strings.ToLower(t.Name()), "-"), "-")
	if len(name) > 40 {
		name = strings.TrimRight(name[:40], "-")
	}
	name = fmt.Sprintf("%s-%d", name, s.buckets.Add(1))
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if _, err := s.Client(t, s.Endpoint).CreateBucket(ctx, &s3.CreateBucketInput{Bucket: &name}); err != nil {
		t.Fatalf("creating bucket %s: %v", name, err)
	}
	return name
}

// findScript finds scripts/s3-server in the module's root, above the test's
// working directory (its package's).
func findScript(t testing.TB) string {
	t.Helper()
	dir, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	for {
		p := filepath.Join(dir, "scripts", "s3-server")
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			if _, err := os.Stat(p); err != nil {
				t.Fatal(err)
			}
			return p
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			t.Fatal("s3test: no go.mod above the working directory")
		}
		dir = parent
	}
}

// requireWeed makes sure the weed binary exists. Outside CI a missing one
// skips the test rather than build it there (several minutes, cold); in CI
// it is built, and a failed build fails the test.
func requireWeed(t testing.TB, script string) {
	t.Helper()
	out, err := exec.Command(script, "path").Output()
	if err != nil {
		testsupport.SkipOrFail(t, fmt.Sprintf("s3test: %s path: %v", script, err))
		return
	}
	weed := strings.TrimSpace(string(out))
	if fi, err := os.Stat(weed); err == nil && fi.Mode().IsRegular() && fi.Mode()&0o111 != 0 {
		return
	}
	if os.Getenv("CI") != "true" {
		testsupport.SkipOrFail(t, "s3test: no SeaweedFS weed binary at "+weed+": build it with make s3-server")
		return
	}
	if out, err := exec.Command(script, "build").CombinedOutput(); err != nil {
		testsupport.SkipOrFail(t, fmt.Sprintf("s3test: building weed: %v\n%s", err, out))
	}
}

// errPortTaken is launch's: the block of ports chosen was taken before weed
// bound it, and another block may do.
var errPortTaken = errors.New("s3test: a port of the server was taken")

// launch runs weed through scripts/s3-server run, which records its ports in
// s.Dir, and waits until it serves requests. A block of ports taken in the
// meantime (by another test's server) is given up for another, except on a
// restart, whose ports are the server's.
func (s *Server) launch(t testing.TB) {
	t.Helper()
	_, err := os.Stat(filepath.Join(s.Dir, "port"))
	restarting := err == nil
	for try := 1; ; try++ {
		err := s.launchOnce()
		if err == nil {
			return
		}
		if !errors.Is(err, errPortTaken) || restarting || (os.Getenv("PGPORTER_S3_PORT") != "" && !s.shared) || try == 5 {
			t.Fatalf("starting the S3 server: %v\n%s", err, s.logTail())
		}
		if err := os.Remove(filepath.Join(s.Dir, "port")); err != nil {
			t.Fatal(err)
		}
	}
}

func (s *Server) launchOnce() error {
	log, err := os.Create(filepath.Join(s.Dir, "weed.log"))
	if err != nil {
		return err
	}
	defer log.Close()
	cmd := exec.Command(s.script, "run", s.Dir)
	cmd.Stdout, cmd.Stderr = log, log
	if s.shared {
		// A fixed block would be held for the whole test binary, and
		// refused to any test's own server (Start).
		cmd.Env = slices.DeleteFunc(os.Environ(), func(kv string) bool { return strings.HasPrefix(kv, "PGPORTER_S3_PORT=") })
	}
	// The script becomes weed (exec), which so dies with the test binary,
	// even when that is killed before its cleanups.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return err
	}
	exited := make(chan struct{})
	go func() {
		_ = cmd.Wait()
		close(exited)
	}()
	s.cmd, s.exited = cmd, exited
	out, err := exec.Command(s.script, "wait", s.Dir, strconv.Itoa(cmd.Process.Pid)).CombinedOutput()
	if err == nil {
		return nil
	}
	s.kill()
	var exit *exec.ExitError
	if errors.As(err, &exit) && exit.ExitCode() == 3 {
		return errPortTaken
	}
	return fmt.Errorf("%s wait: %v: %s", s.script, err, out)
}

// kill ends weed at once: the tests throw its data away, and its graceful
// shutdown can take 15 s or more. scripts/s3-server kill then removes the
// Unix sockets that weed leaves in /tmp.
func (s *Server) kill() {
	if s.cmd == nil {
		return
	}
	_ = s.cmd.Process.Kill()
	<-s.exited
	s.cmd = nil
	_ = exec.Command(s.script, "kill", s.Dir).Run()
}

func (s *Server) loadEnv(t testing.TB) {
	t.Helper()
	out, err := exec.Command(s.script, "env", s.Dir).Output()
	if err != nil {
		t.Fatalf("%s env: %v", s.script, err)
	}
	vars := map[string]string{}
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		k, v, ok := strings.Cut(strings.TrimPrefix(sc.Text(), "export "), "=")
		if !ok {
			continue
		}
		vars[k] = v
		s.env = append(s.env, k+"="+v)
	}
	s.Endpoint = vars["AWS_ENDPOINT_URL"]
	s.TLSEndpoint = vars["PGPORTER_S3_TLS_ENDPOINT"]
	s.CAFile = vars["PGPORTER_S3_CA_FILE"]
	s.AccessKey = vars["AWS_ACCESS_KEY_ID"]
	s.SecretKey = vars["AWS_SECRET_ACCESS_KEY"]
	s.Region = vars["AWS_REGION"]
	for k, v := range map[string]string{"AWS_ENDPOINT_URL": s.Endpoint, "PGPORTER_S3_TLS_ENDPOINT": s.TLSEndpoint,
		"PGPORTER_S3_CA_FILE": s.CAFile, "AWS_ACCESS_KEY_ID": s.AccessKey, "AWS_SECRET_ACCESS_KEY": s.SecretKey, "AWS_REGION": s.Region} {
		if v == "" {
			t.Fatalf("%s env printed no %s:\n%s", s.script, k, out)
		}
	}
}

// logTail returns the end of weed.log, for a failure's message.
func (s *Server) logTail() string {
	b, _ := os.ReadFile(filepath.Join(s.Dir, "weed.log"))
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > 30 {
		lines = lines[len(lines)-30:]
	}
	return strings.Join(lines, "\n")
}
