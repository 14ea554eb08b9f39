package main

import (
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/pgporter/pgporter/internal/config"
)

// TestSettingNames guards the names of the settings: each flag has its own
// environment variable and file key, and no other variable the code or the
// tests read (PGPORTER_PPROF, PGPORTER_SOAK, PGPORTER_TEST_MAIN, ...) is
// taken for a flag's, so that a test's variable never configures pgporter.
func TestSettingNames(t *testing.T) {
	names := config.Names(newRootCmd(&globals{}))
	envs, keys := map[string]string{}, map[string]string{}
	for _, n := range names {
		who := n.Command + " --" + n.Flag
		require.NotContains(t, envs, n.Env, "%s and %s share %s", envs[n.Env], who, n.Env)
		require.NotContains(t, keys, n.Key, "%s and %s share key %s", keys[n.Key], who, n.Key)
		require.False(t, strings.HasPrefix(n.Env, config.TestEnvPrefix), "%s: %s is in the tests' namespace", who, n.Env)
		envs[n.Env], keys[n.Key] = who, who
	}
	require.Equal(t, "pgporter --home", envs["PGPORTER_HOME"])
	require.Equal(t, "pgporter mover serve --listen", envs["PGPORTER_MOVER_SERVE_LISTEN"])

	// Every PGPORTER_ variable named in the code, scripts and Makefile.
	// Only these are flags' variables on purpose.
	flagVars := map[string]bool{"PGPORTER_HOME": true, "PGPORTER_CONFIG": true}
	re := regexp.MustCompile(`PGPORTER_[A-Z0-9_]*[A-Z0-9]`)
	modRoot := filepath.Join("..", "..")
	err := filepath.WalkDir(modRoot, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			if name := d.Name(); name == ".git" || name == "testdata" || path == filepath.Join(modRoot, "internal", "config") {
				return filepath.SkipDir
			}
			return nil
		}
		rel, _ := filepath.Rel(modRoot, path)
		if !strings.HasSuffix(path, ".go") && d.Name() != "Makefile" && !strings.HasPrefix(rel, "scripts"+string(filepath.Separator)) {
			return nil
		}
		if strings.HasPrefix(d.Name(), "config") {
			return nil // the config command and this test name them as examples
		}
		data, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		for _, v := range re.FindAllString(string(data), -1) {
			if who, ok := envs[v]; ok && !flagVars[v] {
				t.Errorf("%s reads %s, the variable of %s: rename it (variables of tests start with %s)", rel, v, who, config.TestEnvPrefix)
			}
		}
		return nil
	})
	require.NoError(t, err)
}

// TestConfiguredDefaultsAreNotMistakes: a check that refuses a flag in a
// mode where it makes no sense refuses it given on the command line, not
// set in the configuration file for the command's other uses.
func TestConfiguredDefaultsAreNotMistakes(t *testing.T) {
	path := filepath.Join(t.TempDir(), "pgporter.toml")
	require.NoError(t, os.WriteFile(path, []byte("[publish]\nport = 5433\n"), 0o600))
	t.Setenv("PGPORTER_CONFIG", path)
	home := t.TempDir()
	code, _, errs := runCLI(t, "--home", home, "publish", "--resume", "p-20260101-120000-a1b2c3")
	require.NotEqual(t, 0, code)
	require.NotContains(t, errs, "takes no --port")
	code, _, errs = runCLI(t, "--home", home, "publish", "--resume", "p-20260101-120000-a1b2c3", "--port", "5433")
	require.Equal(t, exitUsage, code, errs)
	require.Contains(t, errs, "publish --resume ID takes no --port")
}

func TestRedactPassword(t *testing.T) {
	for in, want := range map[string]string{
		"host=db password=s3cret user=x":         "host=db password=*** user=x",
		"host=db password = 'a b\\' c' user=x":   "host=db password = *** user=x",
		"postgresql://u:s3cret@db:5432/shop":     "postgresql://u:***@db:5432/shop",
		"postgresql://u@db/shop?sslmode=require": "postgresql://u@db/shop?sslmode=require",
		"/srv/pgporter/repo":                     "/srv/pgporter/repo",
	} {
		require.Equal(t, want, redactPassword(in), in)
	}
}
