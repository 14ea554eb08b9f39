package main

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/pgporter/pgporter/internal/testsupport"
)

// TestInstallDeb builds the Debian package with 'make deb', installs it into
// a temporary root (dpkg --root, maintainer scripts included, as root;
// dpkg-deb -x otherwise) and runs what it installed: 'pgporter version', and
// the systemd units' ExecStartPre and ExecStart lines as systemd would run
// them (their Environment= and EnvironmentFile=, $VAR split into words),
// with a home in the root and a loopback port; a send into the mover proves
// it serves. systemd-analyze verify checks the units where it is installed
// (this machine has no systemd to start them).
func TestInstallDeb(t *testing.T) {
	testsupport.RequireTool(t, "make", "make")
	testsupport.RequireTool(t, "dpkg-deb", "dpkg")
	repo, err := filepath.Abs("../..")
	require.NoError(t, err)
	require.FileExists(t, filepath.Join(repo, "go.mod"))
	tmp := t.TempDir()
	build := filepath.Join(tmp, "build")

	// PGPORTER_HOME set while the man pages are made must not become
	// their --home default.
	mk := exec.Command("make", "--no-print-directory", "-C", repo, "deb", "BUILDDIR="+build, "BIN="+filepath.Join(build, "pgporter"))
	mk.Env = append(envWithout("MAKEFLAGS", "MFLAGS", "MAKELEVEL", "PGPORTER_HOME"), "PGPORTER_HOME="+filepath.Join(tmp, "elsewhere"))
	out, err := mk.CombinedOutput()
	require.NoError(t, err, "make deb:\n%s", out)
	debs, _ := filepath.Glob(filepath.Join(build, "pgporter_*.deb"))
	require.Len(t, debs, 1, "make deb made %v:\n%s", debs, out)
	deb := debs[0]

	checkMakeInstall(t, repo, build)

	fields := map[string]string{}
	for _, f := range []string{"Package", "Version", "Architecture", "Maintainer", "Depends"} {
		v, err := exec.Command("dpkg-deb", "-f", deb, f).Output()
		require.NoError(t, err, "dpkg-deb -f %s", f)
		fields[f] = strings.TrimSpace(string(v))
	}
	require.Equal(t, "pgporter", fields["Package"])
	require.Regexp(t, `^[0-9][A-Za-z0-9.+~]*$`, fields["Version"], "not a valid Debian version without a revision")
	require.NotEmpty(t, fields["Architecture"])
	require.Equal(t, filepath.Base(deb), "pgporter_"+fields["Version"]+"_"+fields["Architecture"]+".deb")

	root := filepath.Join(tmp, "root")
	installDeb(t, deb, root)
	for _, f := range []string{
		"usr/bin/pgporter",
		"usr/share/man/man1/pgporter.1.gz",
		"usr/share/man/man1/pgporter-mover-serve.1.gz",
		"usr/share/man/man1/pgporter-export.1.gz",
		"usr/share/bash-completion/completions/pgporter",
		"usr/share/zsh/vendor-completions/_pgporter",
		"usr/share/fish/vendor_completions.d/pgporter.fish",
		"usr/lib/systemd/system/pgporter-mover.service",
		"usr/lib/systemd/system/pgporter-mover@.service",
		"etc/default/pgporter-mover",
		"usr/share/doc/pgporter/INSTALL.md",
		"usr/share/doc/pgporter/examples/pgporter-repo",
	} {
		require.FileExists(t, filepath.Join(root, f))
	}
	for _, u := range jobUnitFiles() {
		require.FileExists(t, filepath.Join(root, "usr/lib/systemd/system", u))
	}
	page := gunzipFile(t, filepath.Join(root, "usr/share/man/man1/pgporter-mover-serve.1.gz"))
	require.Contains(t, page, `.TH "PGPORTER" "1"`)
	require.Contains(t, page, "pgporter mover serve")
	require.Contains(t, page, `\fB--listen\fP=":7448"`)
	page = gunzipFile(t, filepath.Join(root, "usr/share/man/man1/pgporter.1.gz"))
	require.Contains(t, page, "/var/lib/pgporter", "--home's documented default")
	require.NotContains(t, page, "elsewhere", "the builder's PGPORTER_HOME leaked into the man page")
	b, err := os.ReadFile(filepath.Join(root, "usr/share/bash-completion/completions/pgporter"))
	require.NoError(t, err)
	require.Contains(t, string(b), "__start_pgporter")

	// The installed binary runs and is the build the package names.
	bin := filepath.Join(root, "usr/bin/pgporter")
	v, err := exec.Command(bin, "version", "--json").Output()
	require.NoError(t, err, "installed pgporter version")
	var info struct{ Version string }
	require.NoError(t, json.Unmarshal(bytes.TrimSpace(v), &info), "%s", v)
	require.Equal(t, debVersion(info.Version), fields["Version"], "package version of release %s", info.Version)
	v, err = exec.Command(bin, "version").Output()
	require.NoError(t, err)
	require.True(t, strings.HasPrefix(string(v), "pgporter "+info.Version+" "), "pgporter version printed %q", v)

	units := map[string]unitFile{}
	for _, name := range []string{"pgporter-mover.service", "pgporter-mover@.service"} {
		u := parseUnit(t, filepath.Join(root, "usr/lib/systemd/system", name))
		require.Equal(t, []string{"on-failure"}, u["Restart"], name)
		require.Len(t, u["ExecStart"], 1, name)
		require.True(t, strings.HasPrefix(u["ExecStart"][0], "/usr/bin/pgporter mover serve "), "%s: ExecStart=%s", name, u["ExecStart"][0])
		require.Contains(t, u["DeviceAllow"], "/dev/fuse rw", name)
		caps := strings.Fields(strings.Join(u["CapabilityBoundingSet"], " "))
		for _, c := range []string{"CAP_SYS_ADMIN", "CAP_SETUID", "CAP_SETGID"} {
			require.Contains(t, caps, c, name)
		}
		// FUSE mounts must stay visible outside the service (docs/INSTALL.md).
		for _, k := range []string{"PrivateMounts", "PrivateTmp", "ProtectSystem", "ProtectHome", "ProtectKernelTunables", "PrivateDevices"} {
			require.NotContains(t, u, k, "%s: %s= would give the mover a mount namespace of its own", name, k)
		}
		units[name] = u
	}
	require.Contains(t, strings.Join(units["pgporter-mover@.service"]["EnvironmentFile"], " "), "%i")
	require.Contains(t, strings.Join(units["pgporter-mover@.service"]["Environment"], " "), "/var/lib/pgporter/%i")

	if sa, err := exec.LookPath("systemd-analyze"); err == nil {
		for name, inst := range map[string]string{"pgporter-mover.service": "pgporter-mover.service", "pgporter-mover@.service": "pgporter-mover@check.service"} {
			// verify wants ExecStart's binary where the unit says.
			b, err := os.ReadFile(filepath.Join(root, "usr/lib/systemd/system", name))
			require.NoError(t, err)
			dir := t.TempDir()
			p := filepath.Join(dir, inst)
			require.NoError(t, os.WriteFile(p, bytes.ReplaceAll(b, []byte("/usr/bin/pgporter"), []byte(bin)), 0o644))
			var stderr bytes.Buffer
			cmd := exec.Command(sa, "verify", "--man=no", p)
			cmd.Stdout, cmd.Stderr = &stderr, &stderr
			require.NoError(t, cmd.Run(), "systemd-analyze verify %s:\n%s", inst, stderr.String())
			require.Empty(t, stderr.String(), "systemd-analyze verify %s", inst)
		}
	} else {
		t.Log("systemd-analyze is not installed: the units are checked by this test's parser only")
	}

	t.Run("jobs", func(t *testing.T) { checkJobUnits(t, root) })

	for _, tc := range []struct{ unit, instance, envFile string }{
		{"pgporter-mover.service", "", "etc/default/pgporter-mover"},
		{"pgporter-mover@.service", "b", "etc/default/pgporter-mover-b"},
	} {
		t.Run(strings.Replace(tc.unit, "@", "@"+tc.instance, 1), func(t *testing.T) {
			dumps := filepath.Join(root, "srv", "dumps"+tc.instance)
			require.NoError(t, os.MkdirAll(dumps, 0o755))
			// The settings file as an operator writes it, on loopback.
			require.NoError(t, os.WriteFile(filepath.Join(root, tc.envFile),
				fmt.Appendf(nil, "# test\nPGPORTER_MOVER_OPTS=\"--listen 127.0.0.1:0 --root %s\"\n", dumps), 0o644))
			runUnit(t, root, units[tc.unit], tc.instance, dumps)
		})
	}
}

// checkMakeInstall runs make install's file part (make install is build,
// then this) with another PREFIX and a DESTDIR, with the binary make deb
// built: every path follows PREFIX, and a second install keeps the
// operator's settings file.
func checkMakeInstall(t *testing.T, repo, build string) {
	t.Helper()
	dest := filepath.Join(t.TempDir(), "dest")
	install := func() string {
		mk := exec.Command("make", "--no-print-directory", "-C", repo, "install-files", "DESTDIR="+dest, "PREFIX=/opt/pgp",
			"BUILDDIR="+build, "BIN="+filepath.Join(build, "pgporter"))
		mk.Env = envWithout("MAKEFLAGS", "MFLAGS", "MAKELEVEL")
		out, err := mk.CombinedOutput()
		require.NoError(t, err, "make install-files:\n%s", out)
		return string(out)
	}
	install()
	for _, f := range []string{
		"opt/pgp/bin/pgporter",
		"opt/pgp/share/man/man1/pgporter.1",
		"opt/pgp/share/man/man1/pgporter-sessions-show.1",
		"opt/pgp/share/bash-completion/completions/pgporter",
		"opt/pgp/share/zsh/site-functions/_pgporter",
		"opt/pgp/share/fish/vendor_completions.d/pgporter.fish",
		"etc/default/pgporter-mover",
	} {
		require.FileExists(t, filepath.Join(dest, f))
	}
	for _, name := range []string{"pgporter-mover.service", "pgporter-mover@.service"} {
		u := parseUnit(t, filepath.Join(dest, "opt/pgp/lib/systemd/system", name))
		require.True(t, strings.HasPrefix(u["ExecStart"][0], "/opt/pgp/bin/pgporter mover serve "), "%s: ExecStart=%s", name, u["ExecStart"][0])
		require.NotContains(t, strings.Join(u["EnvironmentFile"], " "), "@", "%s: placeholders left", name)
	}
	for _, name := range jobUnitFiles() {
		u := parseUnit(t, filepath.Join(dest, "opt/pgp/lib/systemd/system", name))
		for _, line := range u["ExecStart"] {
			require.True(t, strings.HasPrefix(line, "/opt/pgp/bin/pgporter "), "%s: ExecStart=%s", name, line)
		}
		require.NotContains(t, strings.Join(u["EnvironmentFile"], " "), "@", "%s: placeholders left", name)
	}
	require.FileExists(t, filepath.Join(dest, "opt/pgp/share/doc/pgporter/examples/pgporter-repo"))
	settings := filepath.Join(dest, "etc/default/pgporter-mover")
	require.NoError(t, os.WriteFile(settings, []byte("PGPORTER_MOVER_OPTS=\"--listen :7500\"\n"), 0o644))
	require.Contains(t, install(), "keeping")
	b, err := os.ReadFile(settings)
	require.NoError(t, err)
	require.Contains(t, string(b), ":7500", "make install replaced the operator's settings file")
}

// installDeb installs deb into root: with dpkg --root and the package's
// maintainer scripts (outside a chroot, DPKG_ROOT set) as root, else with
// dpkg-deb -x.
func installDeb(t *testing.T, deb, root string) {
	t.Helper()
	if os.Geteuid() != 0 {
		out, err := exec.Command("dpkg-deb", "-x", deb, root).CombinedOutput()
		require.NoError(t, err, "dpkg-deb -x:\n%s", out)
		return
	}
	testsupport.RequireTool(t, "dpkg", "dpkg")
	admin := filepath.Join(root, "var/lib/dpkg")
	for _, d := range []string{"info", "updates"} {
		require.NoError(t, os.MkdirAll(filepath.Join(admin, d), 0o755))
	}
	require.NoError(t, os.WriteFile(filepath.Join(admin, "status"), nil, 0o644))
	// --force-depends: the temporary root has no libc6 package of its own.
	out, err := exec.Command("dpkg", "--root="+root, "--force-script-chrootless", "--force-depends", "--log=/dev/null", "-i", deb).CombinedOutput()
	require.NoError(t, err, "dpkg --root -i:\n%s", out)
	fi, err := os.Stat(filepath.Join(root, "var/lib/pgporter"))
	require.NoError(t, err, "postinst makes the mover's home")
	require.Equal(t, os.FileMode(0o700), fi.Mode().Perm())
	out, err = exec.Command("dpkg-query", "--admindir="+admin, "-W", "-f", "${Status}", "pgporter").CombinedOutput()
	require.NoError(t, err, "%s", out)
	require.Equal(t, "install ok installed", string(out))
}

// debVersion is the Makefile's DEB_VERSION rule: v0.0.0-devel is
// 0.0.0~devel, v1.2.0-3-gabc1234-dirty is 1.2.0+3.gabc1234.dirty.
func debVersion(v string) string {
	v = strings.TrimPrefix(v, "v")
	v = strings.Replace(v, "-devel", "~devel", 1)
	v = strings.Replace(v, "-", "+", 1)
	return strings.ReplaceAll(v, "-", ".")
}

func TestDebVersion(t *testing.T) {
	for v, want := range map[string]string{
		"v0.0.0-devel":                "0.0.0~devel",
		"v0.0.0-devel-dirty":          "0.0.0~devel+dirty",
		"v1.2.0":                      "1.2.0",
		"v1.2.0-3-gabc1234":           "1.2.0+3.gabc1234",
		"v1.2.0-3-gabc1234-dirty":     "1.2.0+3.gabc1234.dirty",
		"v1.2.0-rc1":                  "1.2.0+rc1",
		"v10.0.0-devel-12-gdeadbeef0": "10.0.0~devel+12.gdeadbeef0",
	} {
		require.Equal(t, want, debVersion(v), v)
	}
}

func gunzipFile(t *testing.T, path string) string {
	t.Helper()
	f, err := os.Open(path)
	require.NoError(t, err)
	defer f.Close()
	zr, err := gzip.NewReader(f)
	require.NoError(t, err, path)
	b, err := io.ReadAll(zr)
	require.NoError(t, err, path)
	return string(b)
}

func envWithout(keys ...string) []string {
	var env []string
outer:
	for _, kv := range os.Environ() {
		for _, k := range keys {
			if strings.HasPrefix(kv, k+"=") {
				continue outer
			}
		}
		env = append(env, kv)
	}
	return env
}

// unitFile is a systemd unit's settings: key → values in file order (of
// every section; the keys used here are unique to [Service]).
type unitFile map[string][]string

func parseUnit(t *testing.T, path string) unitFile {
	t.Helper()
	f, err := os.Open(path)
	require.NoError(t, err)
	defer f.Close()
	u := unitFile{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || line[0] == '#' || line[0] == ';' || line[0] == '[' {
			continue
		}
		require.False(t, strings.HasSuffix(line, `\`), "%s: continued lines are not parsed here: %s", path, line)
		k, v, ok := strings.Cut(line, "=")
		require.True(t, ok, "%s: %q is not KEY=VALUE", path, line)
		u[k] = append(u[k], v)
	}
	require.NoError(t, sc.Err())
	return u
}

// unitWords splits a unit's value into words as systemd does: whitespace
// separates, double quotes group.
func unitWords(s string) []string {
	var words []string
	var cur strings.Builder
	in, quoted := false, false
	for _, r := range s {
		switch {
		case r == '"':
			quoted, in = !quoted, true
		case (r == ' ' || r == '\t') && !quoted:
			if in {
				words = append(words, cur.String())
				cur.Reset()
				in = false
			}
		default:
			cur.WriteRune(r)
			in = true
		}
	}
	if in {
		words = append(words, cur.String())
	}
	return words
}

var unitVarRE = regexp.MustCompile(`^\$([A-Za-z_][A-Za-z0-9_]*)$|\$\{([A-Za-z_][A-Za-z0-9_]*)\}`)

// unitCommand is an Exec line of u as systemd runs it for instance: %i
// replaced, a word "$VAR" split into the words of VAR, "${VAR}" replaced in
// place. Paths the package installs are taken inside root.
func unitCommand(line, instance, root string, env map[string]string) []string {
	var argv []string
	for _, w := range unitWords(strings.ReplaceAll(line, "%i", instance)) {
		if m := unitVarRE.FindStringSubmatch(w); m != nil && m[1] != "" {
			argv = append(argv, strings.Fields(env[m[1]])...)
			continue
		}
		argv = append(argv, unitVarRE.ReplaceAllStringFunc(w, func(s string) string {
			return env[strings.Trim(s, "${}")]
		}))
	}
	argv[0] = filepath.Join(root, argv[0])
	return argv
}

// unitEnv is the environment systemd gives u's commands: Environment=, then
// EnvironmentFile= (a leading "-": optional), with PGPORTER_HOME taken
// inside root.
func unitEnv(t *testing.T, u unitFile, instance, root string) map[string]string {
	t.Helper()
	env := map[string]string{}
	for _, line := range u["Environment"] {
		for _, w := range unitWords(strings.ReplaceAll(line, "%i", instance)) {
			k, v, ok := strings.Cut(w, "=")
			require.True(t, ok, "Environment=%s", line)
			env[k] = v
		}
	}
	for _, line := range u["EnvironmentFile"] {
		path := strings.ReplaceAll(line, "%i", instance)
		optional := strings.HasPrefix(path, "-")
		path = filepath.Join(root, strings.TrimPrefix(path, "-"))
		b, err := os.ReadFile(path)
		if optional && os.IsNotExist(err) {
			continue
		}
		require.NoError(t, err, "EnvironmentFile=%s", line)
		for l := range strings.Lines(string(b)) {
			l = strings.TrimSpace(l)
			if l == "" || l[0] == '#' || l[0] == ';' {
				continue
			}
			k, v, ok := strings.Cut(l, "=")
			require.True(t, ok, "%s: %q", path, l)
			if len(v) >= 2 && v[0] == '"' && v[len(v)-1] == '"' {
				v = v[1 : len(v)-1]
			}
			env[k] = v
		}
	}
	require.NotEmpty(t, env["PGPORTER_HOME"], "the unit sets the mover's home")
	env["PGPORTER_HOME"] = filepath.Join(root, env["PGPORTER_HOME"])
	return env
}

func environ(env map[string]string) []string {
	out := []string{"PATH=" + os.Getenv("PATH")}
	for k, v := range env {
		out = append(out, k+"="+v)
	}
	return out
}

var listeningLineRE = regexp.MustCompile(`^listening on (\S+) as (\S+)$`)

// runUnit runs u's ExecStartPre lines, then its ExecStart in the
// background; once the mover says where it listens, a send into dumps
// proves it serves; SIGTERM must then stop it with status 0.
func runUnit(t *testing.T, root string, u unitFile, instance, dumps string) {
	env := unitEnv(t, u, instance, root)
	home := env["PGPORTER_HOME"]
	var id string
	for _, line := range u["ExecStartPre"] {
		argv := unitCommand(line, instance, root, env)
		cmd := exec.Command(argv[0], argv[1:]...)
		cmd.Env = environ(env)
		out, err := cmd.Output()
		require.NoError(t, err, "ExecStartPre=%s", line)
		if lines := strings.Fields(string(out)); len(lines) > 0 {
			id = lines[len(lines)-1]
		}
	}
	require.NotEmpty(t, id, "ExecStartPre (mover init) prints the peer ID")
	require.DirExists(t, filepath.Join(home, "identity"))

	// A sender this mover trusts with send.
	bin := filepath.Join(root, "usr/bin/pgporter")
	sender := filepath.Join(t.TempDir(), "sender")
	out, err := exec.Command(bin, "mover", "init", "--home", sender).Output()
	require.NoError(t, err)
	senderID := strings.TrimSpace(string(out))
	out, err = exec.Command(bin, "mover", "trust", senderID, "--allow", "send", "--home", home).CombinedOutput()
	require.NoError(t, err, "%s", out)

	argv := unitCommand(u["ExecStart"][0], instance, root, env)
	serve := exec.Command(argv[0], argv[1:]...)
	serve.Env = environ(env)
	var stderr bytes.Buffer
	serve.Stderr = &stderr
	stdout, err := serve.StdoutPipe()
	require.NoError(t, err)
	require.NoError(t, serve.Start(), "ExecStart=%s", u["ExecStart"][0])
	exited := make(chan error, 1)
	listening := make(chan []string, 1)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			if m := listeningLineRE.FindStringSubmatch(sc.Text()); m != nil {
				listening <- m
			}
		}
		exited <- serve.Wait()
	}()
	stopped := false
	t.Cleanup(func() {
		if !stopped {
			serve.Process.Kill()
			<-exited
		}
	})
	var addr string
	select {
	case m := <-listening:
		addr = m[1]
		require.Equal(t, id, m[2], "serve runs on the identity ExecStartPre made")
	case err := <-exited:
		stopped = true
		t.Fatalf("ExecStart=%s exited before listening (%v):\n%s", u["ExecStart"][0], err, stderr.String())
	case <-time.After(60 * time.Second):
		t.Fatalf("ExecStart=%s did not listen within 60s:\n%s", u["ExecStart"][0], stderr.String())
	}
	require.Regexp(t, `^127\.0\.0\.1:[0-9]+$`, addr)

	src := filepath.Join(t.TempDir(), "src")
	require.NoError(t, os.MkdirAll(src, 0o755))
	require.NoError(t, os.WriteFile(filepath.Join(src, "hello.txt"), []byte("hello from "+instance+"\n"), 0o644))
	out, err = exec.Command(bin, "send", "--home", sender, "--to", addr, "--peer", id, src, filepath.Join(dumps, "d1")).CombinedOutput()
	require.NoError(t, err, "send into the unit's mover:\n%s\nmover:\n%s", out, stderr.String())
	b, err := os.ReadFile(filepath.Join(dumps, "d1", "hello.txt"))
	require.NoError(t, err)
	require.Equal(t, "hello from "+instance+"\n", string(b))

	require.NoError(t, serve.Process.Signal(syscall.SIGTERM))
	select {
	case err := <-exited:
		stopped = true
		require.NoError(t, err, "the mover stops cleanly on SIGTERM (systemd's KillSignal):\n%s", stderr.String())
	case <-time.After(30 * time.Second):
		t.Fatalf("the mover did not stop within 30s of SIGTERM:\n%s", stderr.String())
	}
}
