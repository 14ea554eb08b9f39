package main

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/pgporter/pgporter/internal/config"
)

// jobs are the job templates of dist/systemd: each a .service and a
// .timer, of one repository named by the instance.
var jobs = []struct {
	name     string
	commands []string // each ExecStart's pgporter command, in order
	ops      []string // what they record in the repository
}{
	{"backup", []string{"backup"}, []string{"backup"}},
	{"forget-prune", []string{"forget", "prune"}, []string{"forget", "prune"}},
	{"check", []string{"check"}, []string{"check"}},
	{"check-read-data", []string{"check --read-data"}, []string{"check-read-data"}},
	{"metrics", []string{"metrics"}, nil},
}

// flagEnv is the environment variable of the flag of command (a path
// under pgporter).
func flagEnv(t *testing.T, command, flag string) string {
	t.Helper()
	for _, n := range config.Names(newRootCmd(&globals{})) {
		if n.Command == "pgporter "+command && n.Flag == flag {
			return n.Env
		}
	}
	t.Fatalf("pgporter %s has no flag --%s", command, flag)
	return ""
}

func jobUnitFiles() []string {
	var out []string
	for _, j := range jobs {
		out = append(out, "pgporter-"+j.name+"@.service", "pgporter-"+j.name+"@.timer")
	}
	return out
}

// checkJobUnits checks the installed job units under root and runs them as
// systemd would, on a real repository: the installed example settings
// file, with a repository, a data directory and a textfile of the test's,
// is their settings file; backup (twice), check, check --read-data,
// forget-prune and metrics run their ExecStart lines in order with the
// units' environment; the textfile the metrics unit writes then shows each
// job's success and the retention's effect. systemd-analyze verifies each
// pair of units where it is installed.
func checkJobUnits(t *testing.T, root string) {
	bin := filepath.Join(root, "usr/bin/pgporter")
	units := map[string]unitFile{}
	for _, j := range jobs {
		svc := "pgporter-" + j.name + "@.service"
		u := parseUnit(t, filepath.Join(root, "usr/lib/systemd/system", svc))
		require.Equal(t, []string{"oneshot"}, u["Type"], svc)
		require.Equal(t, []string{"/etc/default/pgporter-repo-%i"}, u["EnvironmentFile"], "%s: one settings file per repository, which must exist", svc)
		require.Len(t, u["ExecStart"], len(j.commands), svc)
		for i, cmd := range j.commands {
			require.True(t, strings.HasPrefix(u["ExecStart"][i], "/usr/bin/pgporter "+cmd+" --repo ${PGPORTER_REPO}"), "%s: ExecStart=%s", svc, u["ExecStart"][i])
		}
		require.NotContains(t, u, "Restart", "%s: the timer runs it again", svc)
		require.Equal(t, []string{"yes"}, u["NoNewPrivileges"], svc)
		require.Equal(t, []string{"full"}, u["ProtectSystem"], svc)
		require.Equal(t, []string{"yes"}, u["MemoryDenyWriteExecute"], svc)
		caps := strings.Fields(strings.Join(u["CapabilityBoundingSet"], " "))
		require.NotEmpty(t, caps, svc)
		for _, c := range caps {
			require.Contains(t, []string{"CAP_DAC_OVERRIDE", "CAP_DAC_READ_SEARCH", "CAP_CHOWN", "CAP_FOWNER"}, c, "%s: a job needs no %s", svc, c)
		}
		units[j.name] = u

		tmr := "pgporter-" + j.name + "@.timer"
		tu := parseUnit(t, filepath.Join(root, "usr/lib/systemd/system", tmr))
		require.Len(t, tu["OnCalendar"], 1, tmr)
		require.Equal(t, []string{"timers.target"}, tu["WantedBy"], tmr)
		if sa, err := exec.LookPath("systemd-analyze"); err == nil {
			out, err := exec.Command(sa, "calendar", tu["OnCalendar"][0]).CombinedOutput()
			require.NoError(t, err, "%s: OnCalendar=%s:\n%s", tmr, tu["OnCalendar"][0], out)
			// verify wants ExecStart's binary where the unit says, and the
			// timer's service beside it.
			dir := t.TempDir()
			var paths []string
			for _, f := range []string{svc, tmr} {
				b, err := os.ReadFile(filepath.Join(root, "usr/lib/systemd/system", f))
				require.NoError(t, err)
				p := filepath.Join(dir, strings.Replace(f, "@.", "@main.", 1))
				require.NoError(t, os.WriteFile(p, bytes.ReplaceAll(b, []byte("/usr/bin/pgporter"), []byte(bin)), 0o644))
				paths = append(paths, p)
			}
			var stderr bytes.Buffer
			cmd := exec.Command(sa, append([]string{"verify", "--man=no"}, paths...)...)
			cmd.Stdout, cmd.Stderr = &stderr, &stderr
			require.NoError(t, cmd.Run(), "systemd-analyze verify %s:\n%s", j.name, stderr.String())
			require.Empty(t, stderr.String(), "systemd-analyze verify %s", j.name)
		}
	}
	require.Contains(t, strings.Join(units["metrics"]["Environment"], " "), flagEnv(t, "metrics", "textfile")+"=/var/lib/prometheus/node-exporter/pgporter-%i.prom")

	// The settings file: the installed example, with the test's paths
	// after it (later lines win, in systemd as in unitEnv).
	example, err := os.ReadFile(filepath.Join(root, "usr/share/doc/pgporter/examples/pgporter-repo"))
	require.NoError(t, err)
	repo := filepath.Join(root, "srv", "pgporter", "repo")
	pgdata, _ := fakeDataDir(t)
	textfile := filepath.Join(root, "var", "lib", "prometheus", "node-exporter", "pgporter-t.prom")
	require.NoError(t, os.MkdirAll(filepath.Dir(textfile), 0o755))
	// The flags' variables as the configuration names them (this file
	// must not spell them: TestSettingNames).
	settings := string(example) + "\n# test\nPGPORTER_REPO=" + repo +
		"\n" + flagEnv(t, "backup", "pgdata") + "=" + pgdata +
		"\n" + flagEnv(t, "forget", "keep-last") + "=1" +
		"\n" + flagEnv(t, "metrics", "textfile") + "=" + textfile + "\n"
	require.NoError(t, os.WriteFile(filepath.Join(root, "etc/default/pgporter-repo-t"), []byte(settings), 0o644))

	runJob := func(name string) {
		t.Helper()
		u := units[name]
		env := unitEnv(t, u, "t", root)
		for _, line := range u["ExecStart"] {
			argv := unitCommand(line, "t", root, env)
			cmd := exec.Command(argv[0], argv[1:]...)
			cmd.Env = environ(env)
			out, err := cmd.CombinedOutput()
			require.NoError(t, err, "pgporter-%s@t: ExecStart=%s:\n%s", name, line, out)
		}
	}
	for _, name := range []string{"backup", "backup", "check", "check-read-data", "forget-prune", "metrics"} {
		runJob(name)
	}
	b, err := os.ReadFile(textfile)
	require.NoError(t, err, "the metrics unit writes its textfile")
	mfs := promFamilies(t, b)
	v, _ := promValue(mfs, "pgporter_repo_up", "repo="+repo)
	require.Equal(t, 1.0, v)
	v, _ = promValue(mfs, "pgporter_repo_restore_points")
	require.Equal(t, 1.0, v, "forget-prune kept the newest of the two backups (keep-last 1)")
	for _, j := range jobs {
		for _, op := range j.ops {
			v, ok := promValue(mfs, "pgporter_repo_last_run_success", "op="+op)
			require.True(t, ok, "pgporter-%s@t recorded no %s", j.name, op)
			require.Equal(t, 1.0, v, op)
			v, _ = promValue(mfs, "pgporter_repo_failures_total", "op="+op)
			require.Zero(t, v, op)
		}
	}
}
