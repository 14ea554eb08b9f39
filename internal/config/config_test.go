package config

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/spf13/cobra"
	"github.com/stretchr/testify/require"
)

// tree is a small command tree like pgporter's: a global --home, and
// 'mover serve' with a single and a repeatable flag, and a group of two
// mutually exclusive flags.
type tree struct {
	root, serve      *cobra.Command
	home, listen     string
	roots            []string
	repo, repoPeer   string
	jobs             int
	verify, dumpOnly bool
	internal         string
}

func newTree() *tree {
	t := &tree{}
	t.root = &cobra.Command{Use: "pgporter"}
	t.root.PersistentFlags().StringVar(&t.home, "home", "/var/lib/pgporter", "")
	mover := &cobra.Command{Use: "mover"}
	t.serve = &cobra.Command{Use: "serve", RunE: func(*cobra.Command, []string) error { return nil }}
	f := t.serve.Flags()
	f.StringVar(&t.listen, "listen", ":7448", "")
	f.StringArrayVar(&t.roots, "root", nil, "")
	f.StringVar(&t.repo, "repo", "", "")
	f.StringVar(&t.repoPeer, "repo-peer", "", "")
	f.IntVar(&t.jobs, "jobs", 2, "")
	f.BoolVar(&t.verify, "verify-commit", false, "")
	f.StringVar(&t.internal, "internal", "", "")
	_ = f.MarkHidden("internal")
	t.serve.MarkFlagsMutuallyExclusive("repo", "repo-peer")
	mover.AddCommand(t.serve)
	t.root.AddCommand(mover)
	return t
}

func writeFile(t *testing.T, text string) string {
	p := filepath.Join(t.TempDir(), "pgporter.toml")
	require.NoError(t, os.WriteFile(p, []byte(text), 0o600))
	return p
}

// parse parses args as the command line of 'mover serve' and applies env
// and the file at path; it returns the settings by flag name.
func (tr *tree) parse(t *testing.T, path string, env map[string]string, args ...string) (map[string]Setting, error) {
	t.Helper()
	require.NoError(t, tr.serve.ParseFlags(args))
	f, err := Load(path, true, tr.root)
	if err != nil {
		return nil, err
	}
	r := &Resolver{File: f, Getenv: func(k string) string { return env[k] }}
	settings, err := r.Apply(tr.serve)
	if err != nil {
		return nil, err
	}
	m := map[string]Setting{}
	for _, s := range settings {
		m[s.Name] = s
	}
	return m, nil
}

// TestPrecedence guards the order flag, then env, then file, then default,
// each value reported with its source.
func TestPrecedence(t *testing.T) {
	path := writeFile(t, `
home = "/file/home"
[mover.serve]
listen = ":1"
root = ["/r1", "/r2,x"]
jobs = 7
verify-commit = true
`)
	tr := newTree()
	s, err := tr.parse(t, path, map[string]string{"PGPORTER_MOVER_SERVE_LISTEN": ":2", "PGPORTER_MOVER_SERVE_JOBS": "9", "PGPORTER_HOME": ""}, "--jobs", "11")
	require.NoError(t, err)
	require.Equal(t, ":2", tr.listen)
	require.Equal(t, FromEnv, s["listen"].Source)
	require.Equal(t, "PGPORTER_MOVER_SERVE_LISTEN", s["listen"].Origin)
	require.Equal(t, 11, tr.jobs)
	require.Equal(t, FromFlag, s["jobs"].Source)
	require.Equal(t, []string{"/r1", "/r2,x"}, tr.roots)
	require.Equal(t, FromFile, s["root"].Source)
	require.Equal(t, path+": mover.serve.root", s["root"].Origin)
	require.True(t, tr.verify)
	require.Equal(t, "/file/home", tr.home, "an empty variable counts as unset")
	require.Equal(t, FromFile, s["home"].Source)
	require.Equal(t, "home", s["home"].Key)
	require.Equal(t, "PGPORTER_HOME", s["home"].Env)
	require.Equal(t, FromDefault, s["repo"].Source)
	require.True(t, tr.serve.Flags().Changed("listen"), "a value from env or file counts as given, for required flags")
	require.False(t, OnCommandLine(tr.serve.Flags(), "listen"), "... but not as given on the command line")
	require.False(t, OnCommandLine(tr.serve.Flags(), "root"))
	require.True(t, OnCommandLine(tr.serve.Flags(), "jobs"))
	require.False(t, OnCommandLine(tr.serve.Flags(), "repo"))
	require.Equal(t, FromFile, SourceOf(tr.serve.Flags().Lookup("root")))
}

// TestHidden: hidden flags are for pgporter starting itself (publish
// --serve); neither the environment nor the file sets them.
func TestHidden(t *testing.T) {
	tr := newTree()
	s, err := tr.parse(t, writeFile(t, ""), map[string]string{"PGPORTER_MOVER_SERVE_INTERNAL": "x"})
	require.NoError(t, err)
	require.Empty(t, tr.internal)
	require.NotContains(t, s, "internal")
	_, err = Load(writeFile(t, "[mover.serve]\ninternal = \"x\"\n"), true, tr.root)
	require.ErrorContains(t, err, `unknown key "mover.serve.internal"`)
}

func TestEnvList(t *testing.T) {
	tr := newTree()
	s, err := tr.parse(t, writeFile(t, ""), map[string]string{"PGPORTER_MOVER_SERVE_ROOT": `/a,"/b,c"`})
	require.NoError(t, err)
	require.Equal(t, []string{"/a", "/b,c"}, tr.roots)
	require.Equal(t, `["/a", "/b,c"]`, s["root"].Value)
}

// TestMutuallyExclusive: a file's --repo yields to --repo-peer given on the
// command line, rather than make the pair conflict.
func TestMutuallyExclusive(t *testing.T) {
	tr := newTree()
	s, err := tr.parse(t, writeFile(t, "[mover.serve]\nrepo = \"/srv/repo\"\n"), nil, "--repo-peer", "x")
	require.NoError(t, err)
	require.Empty(t, tr.repo)
	require.Equal(t, FromDefault, s["repo"].Source)
	require.NoError(t, tr.serve.ValidateFlagGroups())
}

func TestFileErrors(t *testing.T) {
	for _, tc := range []struct{ name, text, want string }{
		{"typo", "[mover.serve]\nlisen = \":1\"\n", `unknown key "mover.serve.lisen": 'pgporter mover serve' has no flag --lisen; did you mean "listen"?`},
		{"no such command", "[mover.srve]\n", `unknown key "mover.srve": 'pgporter mover' has no subcommand "srve" (a table is a command); did you mean "serve"?`},
		{"global flag in a table", "[mover.serve]\nhome = \"/x\"\n", `key "mover.serve.home": --home belongs to 'pgporter'; set it as key home at the top of the file`},
		{"command as a key", "mover = 1\n", `key "mover": 'pgporter mover' is a command; its settings go in a table [mover]`},
		{"list for a single flag", "[mover.serve]\nlisten = [\":1\"]\n", `key "mover.serve.listen": a list, but --listen takes one value`},
		{"table in a list", "[[mover.serve.root]]\n", `key "mover.serve.root"`},
		{"config in the file", "config = \"/x\"\n", `the file cannot name another file`},
		{"syntax", "[mover.serve\n", "toml: line "},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := writeFile(t, tc.text)
			_, err := Load(path, true, newTree().root)
			require.ErrorContains(t, err, "configuration file "+path)
			require.ErrorContains(t, err, tc.want)
		})
	}
}

func TestBadValue(t *testing.T) {
	path := writeFile(t, "[mover.serve]\njobs = \"many\"\n")
	_, err := newTree().parse(t, path, nil)
	require.ErrorContains(t, err, path+": mover.serve.jobs: invalid argument \"many\"")
}

func TestMissingFile(t *testing.T) {
	missing := filepath.Join(t.TempDir(), "none.toml")
	f, err := Load(missing, false, newTree().root)
	require.NoError(t, err, "a default file may be missing")
	require.Empty(t, f.Path)
	_, err = Load(missing, true, newTree().root)
	require.ErrorContains(t, err, missing, "a file the user named must exist")
}

func TestNames(t *testing.T) {
	names := Names(newTree().root)
	require.Contains(t, names, Name{Command: "pgporter", Flag: "home", Env: "PGPORTER_HOME", Key: "home"})
	require.Contains(t, names, Name{Command: "pgporter mover serve", Flag: "repo-peer", Env: "PGPORTER_MOVER_SERVE_REPO_PEER", Key: "mover.serve.repo-peer"})
}
