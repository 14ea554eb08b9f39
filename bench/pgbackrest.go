package bench

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
)

// pgBackRest is one stanza of pgBackRest (Debian's package) in a scratch
// directory: its configuration file, repository, log, lock and spool
// directories, all owned by the OS user that runs PostgreSQL, which every
// pgbackrest command runs as (pgBackRest refuses to read a data directory
// it does not own, and the archive-push that the server runs is that user's).
type pgBackRest struct {
	dir    string // holds pgbackrest.conf, repo/, log/, lock/, spool/
	conf   string
	repo   string // "" when the repository is on S3
	stanza string
	cred   *syscall.Credential // the postgres OS user, or nil
}

// pgBackRestStanza is the harness's stanza name.
const pgBackRestStanza = "bench"

// pgBackRestCompress is the repository's compression: zstd at level 1, the
// codec and level of pgporter's own repository (chunk.LevelFastest), so
// that repository sizes compare what each tool stores, not two codecs.
// pgBackRest's default is gz level 6; lz4 would be faster and larger.
var pgBackRestCompress = []string{"compress-type=zst", "compress-level=1"}

// pgBackRestServer is the cluster a stanza backs up.
type pgBackRestServer struct {
	PGData string
	Socket string // socket directory; "" for a stopped cluster only
	Port   int
}

// pgBackRestS3 is a repository on an S3 server, reached over HTTPS (the
// only protocol pgBackRest speaks to S3) with path-style addressing, the
// server's certificate not verified (the test server's is self-signed).
type pgBackRestS3 struct {
	Host        string // 127.0.0.1
	Port        int
	Bucket      string
	Key, Secret string
	Region      string
}

// settings returns the repository's lines of pgbackrest.conf.
func (s *pgBackRestS3) settings() []string {
	return []string{
		"repo1-type=s3",
		"repo1-path=/" + pgBackRestS3Path,
		"repo1-s3-endpoint=" + s.Host,
		"repo1-storage-port=" + strconv.Itoa(s.Port),
		"repo1-s3-bucket=" + s.Bucket,
		"repo1-s3-key=" + s.Key,
		"repo1-s3-key-secret=" + s.Secret,
		"repo1-s3-region=" + s.Region,
		"repo1-s3-uri-style=path",
		"repo1-storage-verify-tls=n",
	}
}

// pgBackRestS3Path is the repository's path in its bucket: its objects'
// keys start with it and a slash.
const pgBackRestS3Path = "repo"

// newPgBackRest writes a stanza's configuration for srv under dir (which it
// makes), with its repository in dir/repo, and gives dir to cred's user.
// process-max is the machine's cores. It creates no stanza: see create.
func newPgBackRest(dir string, srv pgBackRestServer, cred *syscall.Credential) (*pgBackRest, error) {
	return newPgBackRestOn(dir, srv, nil, "", cred)
}

// newPgBackRestOn is newPgBackRest with the repository on an S3 server when
// s3 is not nil (p.repo is then ""), and encrypted under cipherPass when
// that is not "": pgBackRest's repository encryption, repo1-cipher-type
// aes-256-cbc, its only cipher.
func newPgBackRestOn(dir string, srv pgBackRestServer, s3 *pgBackRestS3, cipherPass string, cred *syscall.Credential) (*pgBackRest, error) {
	p := &pgBackRest{dir: dir, conf: filepath.Join(dir, "pgbackrest.conf"), repo: filepath.Join(dir, "repo"), stanza: pgBackRestStanza, cred: cred}
	repo := []string{"repo1-path=" + p.repo}
	if s3 != nil {
		p.repo = ""
		repo = s3.settings()
	}
	if cipherPass != "" {
		repo = append(repo, "repo1-cipher-type=aes-256-cbc", "repo1-cipher-pass="+cipherPass)
	}
	global := append(repo,
		// Kept forever: a benchmark never expires a backup, and the
		// default retention only warns on every backup.
		"repo1-retention-full=9999999",
		"log-path="+filepath.Join(dir, "log"),
		"lock-path="+filepath.Join(dir, "lock"),
		"spool-path="+filepath.Join(dir, "spool"),
		"log-level-console=warn",
		"log-level-file=off",
		"process-max="+strconv.Itoa(runtime.NumCPU()),
		"start-fast=y",
	)
	global = append(global, pgBackRestCompress...)
	stanza := []string{"pg1-path=" + srv.PGData}
	if srv.Socket != "" {
		stanza = append(stanza, "pg1-socket-path="+srv.Socket, "pg1-port="+strconv.Itoa(srv.Port))
	}
	conf := "[global]\n" + strings.Join(global, "\n") + "\n\n[" + p.stanza + "]\n" + strings.Join(stanza, "\n") + "\n"
	for _, d := range []string{dir, p.repo, filepath.Join(dir, "log"), filepath.Join(dir, "lock"), filepath.Join(dir, "spool")} {
		if d == "" {
			continue
		}
		if err := os.MkdirAll(d, 0o750); err != nil {
			return nil, err
		}
		if err := p.chown(d); err != nil {
			return nil, err
		}
	}
	if err := os.WriteFile(p.conf, []byte(conf), 0o640); err != nil {
		return nil, err
	}
	return p, p.chown(p.conf)
}

func (p *pgBackRest) chown(path string) error {
	if p.cred == nil {
		return nil
	}
	return os.Chown(path, int(p.cred.Uid), int(p.cred.Gid))
}

// archiveCommand is the server's archive_command that pushes its WAL into
// the stanza's repository, as pgBackRest's user guide configures it.
func (p *pgBackRest) archiveCommand() string {
	return fmt.Sprintf("pgbackrest --config=%s --stanza=%s archive-push %%p", p.conf, p.stanza)
}

// cmd returns pgbackrest with the stanza's configuration and args, run as
// the PostgreSQL OS user; under GNU time (peak RSS to peak, which that user
// must be able to write) when peak is not "".
func (p *pgBackRest) cmd(ctx context.Context, peak string, args ...string) *exec.Cmd {
	args = append([]string{"--config=" + p.conf, "--stanza=" + p.stanza}, args...)
	name := "pgbackrest"
	if peak != "" {
		args = append([]string{"-f", "%M", "-o", peak, name}, args...)
		name = "/usr/bin/time"
	}
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Dir = p.dir
	if p.cred != nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: p.cred}
	}
	return cmd
}

// run runs a pgbackrest command to its end.
func (p *pgBackRest) run(ctx context.Context, args ...string) error {
	if out, err := p.cmd(ctx, "", args...).CombinedOutput(); err != nil {
		return fmt.Errorf("pgbackrest %s: %w: %s", strings.Join(args, " "), err, tail(string(out)))
	}
	return nil
}

// RequirePgBackRest returns an error naming what the pgBackRest tools need
// and this machine lacks: pgbackrest (Debian's package, scripts/setup), GNU
// time, and root to run it as the postgres OS user.
func RequirePgBackRest() error {
	var missing []string
	if os.Geteuid() != 0 {
		missing = append(missing, "root")
	}
	for _, p := range []string{"pgbackrest", "/usr/bin/time"} {
		if _, err := exec.LookPath(p); err != nil {
			missing = append(missing, p)
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf("the pgBackRest tools need %s (scripts/setup)", strings.Join(missing, ", "))
	}
	return nil
}

// pgBackRestVersion returns what 'pgbackrest version' prints, e.g.
// "pgBackRest 2.45", for the results' notes.
func pgBackRestVersion(ctx context.Context) string {
	out, err := exec.CommandContext(ctx, "pgbackrest", "version").Output()
	if err != nil {
		return "pgbackrest"
	}
	return strings.TrimSpace(string(out))
}
