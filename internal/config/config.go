package config

import (
	"encoding/csv"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"slices"
	"strconv"
	"strings"

	"github.com/BurntSushi/toml"
	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
)

// DefaultPath is the file read when neither --config nor PGPORTER_CONFIG
// names one. It may be missing.
const DefaultPath = "/etc/pgporter/pgporter.toml"

// EnvPrefix starts the environment variable of every flag. Variables that
// only tests read start with TestEnvPrefix: no command is named "test", so
// they never collide with a flag's.
const (
	EnvPrefix     = "PGPORTER_"
	TestEnvPrefix = "PGPORTER_TEST_"
)

// Source says where a flag's effective value came from.
type Source string

// Sources, from the strongest to the weakest.
const (
	FromFlag    Source = "flag"
	FromEnv     Source = "env"
	FromFile    Source = "file"
	FromDefault Source = "default"
)

// Setting is one flag's effective value, where it came from, and the names
// it has in the environment and in the file.
type Setting struct {
	Name   string `json:"name"` // long flag name, without dashes
	Value  string `json:"value"`
	Source Source `json:"source"`
	// Origin is the flag, variable or file key the value came from:
	// "--listen", "PGPORTER_MOVER_SERVE_LISTEN" or
	// "/etc/pgporter/pgporter.toml: mover.serve.listen"; "" for a default.
	Origin string `json:"origin,omitempty"`
	Env    string `json:"env"` // its environment variable
	Key    string `json:"key"` // its key in the file, dotted: "mover.serve.listen"
}

// skipped are flags cobra adds, and --config itself, which the file cannot set.
var skipped = map[string]bool{"help": true, "version": true, "config": true}

// settable reports whether the environment and the file may set f: not a
// flag cobra adds, not --config, not a hidden flag (those are for pgporter
// starting itself, as publish --serve).
func settable(f *pflag.Flag) bool { return !skipped[f.Name] && !f.Hidden }

// mutuallyExclusive is the annotation cobra's MarkFlagsMutuallyExclusive
// puts on each flag of a group: a value from the environment or the file
// yields to a flag of its group set by a stronger source.
const mutuallyExclusive = "cobra_annotation_mutually_exclusive"

// File is a configuration file, checked against a command tree.
type File struct {
	Path string // "" if no file was read
	top  map[string]any
}

// Load reads the TOML file at path and checks each of its keys against the
// commands under root: a table per command ([mover.serve]), a key per flag
// of that command (persistent flags in the table of the command that
// defines them, so the global ones at the top). A missing file is an empty
// configuration unless required, when the user named it.
func Load(path string, required bool, root *cobra.Command) (*File, error) {
	data, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) && !required {
		return &File{}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("reading configuration file: %w", err)
	}
	var top map[string]any
	if _, err := toml.Decode(string(data), &top); err != nil {
		return nil, fmt.Errorf("configuration file %s: %w", path, err)
	}
	f := &File{Path: path, top: top}
	if err := f.check(root, top, nil); err != nil {
		return nil, err
	}
	return f, nil
}

// check checks the keys of table, the table of cmd (at path in the file).
func (f *File) check(cmd *cobra.Command, table map[string]any, path []string) error {
	keys := make([]string, 0, len(table))
	for k := range table {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		key := strings.Join(append(slices.Clone(path), k), ".")
		if sub, ok := table[k].(map[string]any); ok {
			c := subcommand(cmd, k)
			if c == nil {
				return f.unknown(key, fmt.Sprintf("'%s' has no subcommand %q (a table is a command)", cmd.CommandPath(), k), subcommandNames(cmd), k)
			}
			if err := f.check(c, sub, append(slices.Clone(path), k)); err != nil {
				return err
			}
			continue
		}
		fl := ownFlag(cmd, k)
		if fl == nil {
			if in := cmd.InheritedFlags().Lookup(k); in != nil && settable(in) {
				o := owner(cmd, in)
				where := "key " + fileKey(o, k)
				if !o.HasParent() {
					where = "key " + k + " at the top of the file, before any table"
				}
				return fmt.Errorf("configuration file %s: key %q: --%s belongs to '%s'; set it as %s", f.Path, key, k, o.CommandPath(), where)
			}
			if k == "config" {
				return fmt.Errorf("configuration file %s: key %q: the file cannot name another file; use --config or PGPORTER_CONFIG", f.Path, key)
			}
			if sub := subcommand(cmd, k); sub != nil {
				return fmt.Errorf("configuration file %s: key %q: '%s' is a command; its settings go in a table [%s]", f.Path, key, sub.CommandPath(), key)
			}
			return f.unknown(key, fmt.Sprintf("'%s' has no flag --%s", cmd.CommandPath(), k), ownFlagNames(cmd), k)
		}
		if _, err := values(table[k], fl); err != nil {
			return fmt.Errorf("configuration file %s: key %q: %w", f.Path, key, err)
		}
	}
	return nil
}

func (f *File) unknown(key, why string, names []string, k string) error {
	msg := fmt.Sprintf("configuration file %s: unknown key %q: %s", f.Path, key, why)
	if s := closest(k, names); s != "" {
		msg += fmt.Sprintf("; did you mean %q?", s)
	}
	return errors.New(msg)
}

// lookup returns the value of key in the table at path, if the file has it.
func (f *File) lookup(path []string, key string) (any, bool) {
	t := f.top
	for _, p := range path {
		sub, ok := t[p].(map[string]any)
		if !ok {
			return nil, false
		}
		t = sub
	}
	v, ok := t[key]
	if _, table := v.(map[string]any); table {
		return nil, false
	}
	return v, ok
}

// sourceAnnotation marks a flag set from the environment or the file, with
// the source's name.
const sourceAnnotation = "pgporter_config_source"

// SourceOf says where f's value came from: a flag Changed on the command
// line, or set by Apply from the environment or the file, or a default.
func SourceOf(f *pflag.Flag) Source {
	switch {
	case len(f.Annotations[sourceAnnotation]) == 1:
		return Source(f.Annotations[sourceAnnotation][0])
	case f.Changed:
		return FromFlag
	}
	return FromDefault
}

// OnCommandLine reports whether the command line itself gave flag name of
// fs. A value from the environment or the file counts as given (Changed)
// for required flags and flag groups; a check that refuses a flag in a mode
// where it makes no sense asks this instead, so that a configured default
// is not taken for a mistake.
func OnCommandLine(fs *pflag.FlagSet, name string) bool {
	f := fs.Lookup(name)
	return f != nil && SourceOf(f) == FromFlag
}

// Resolver sets flags from the environment and a file and remembers where
// each flag's value came from. The zero value reads the environment and no
// file.
type Resolver struct {
	File   *File                   // nil: no file
	Getenv func(key string) string // nil: os.Getenv

	seen map[*pflag.Flag]Setting
}

// Record notes where f's value came from, for a flag the caller resolved
// itself (--config): Apply then leaves f alone and reports s.
func (r *Resolver) Record(f *pflag.Flag, s Setting) {
	if r.seen == nil {
		r.seen = map[*pflag.Flag]Setting{}
	}
	r.seen[f] = s
}

// Apply sets each flag of cmd that the command line did not set from its
// environment variable or else from the file, and returns the settings of
// every flag of cmd, those of its ancestors (inherited) first, each group
// sorted by name. A flag Apply has seen before (a persistent flag shared
// with another command) keeps the source recorded then. An empty variable
// counts as unset; a repeatable flag takes a comma-separated list (CSV
// quoting) from a variable and a TOML array from the file.
func (r *Resolver) Apply(cmd *cobra.Command) ([]Setting, error) {
	if r.seen == nil {
		r.seen = map[*pflag.Flag]Setting{}
	}
	getenv := r.Getenv
	if getenv == nil {
		getenv = os.Getenv
	}
	var flags []*pflag.Flag
	for _, fs := range []*pflag.FlagSet{cmd.InheritedFlags(), cmd.LocalFlags()} {
		var group []*pflag.Flag
		fs.VisitAll(func(f *pflag.Flag) {
			if settable(f) || r.seen[f].Name != "" {
				group = append(group, f)
			}
		})
		flags = append(flags, group...) // VisitAll sorts by name
	}
	fresh := map[*pflag.Flag]bool{}
	for _, f := range flags {
		if _, ok := r.seen[f]; ok {
			continue
		}
		fresh[f] = true
		s := Setting{Name: f.Name, Source: FromDefault, Env: EnvName(cmd, f), Key: fileKey(owner(cmd, f), f.Name)}
		if f.Changed {
			s.Source, s.Origin = FromFlag, "--"+f.Name
		}
		r.seen[f] = s
	}
	all := cmd.Flags()
	// The environment first, for every flag, then the file: a value yields
	// to one of its mutually exclusive group set by a stronger source.
	for _, src := range []Source{FromEnv, FromFile} {
		for _, f := range flags {
			s := r.seen[f]
			if !fresh[f] || s.Source != FromDefault || excluded(all, f, r.seen) {
				continue
			}
			var (
				vals   []string
				origin string
				err    error
			)
			switch src {
			case FromEnv:
				v := getenv(s.Env)
				if v == "" {
					continue
				}
				origin = s.Env
				vals, err = envValues(v, f)
			case FromFile:
				if r.File == nil {
					continue
				}
				v, ok := r.File.lookup(commandPath(owner(cmd, f)), f.Name)
				if !ok {
					continue
				}
				origin = r.File.Path + ": " + s.Key
				vals, err = values(v, f)
			}
			if err == nil {
				err = set(all, f, vals)
			}
			if err == nil {
				if f.Annotations == nil {
					f.Annotations = map[string][]string{}
				}
				f.Annotations[sourceAnnotation] = []string{string(src)}
			}
			if err != nil {
				return nil, fmt.Errorf("%s: %w", origin, err)
			}
			s.Source, s.Origin = src, origin
			r.seen[f] = s
		}
	}
	out := make([]Setting, 0, len(flags))
	for _, f := range flags {
		s := r.seen[f]
		s.Value = f.Value.String()
		if sv, ok := f.Value.(pflag.SliceValue); ok {
			s.Value = listString(sv.GetSlice())
		}
		out = append(out, s)
	}
	return out, nil
}

// listString shows a list as TOML writes it: ["/a", "/b"].
func listString(vals []string) string {
	q := make([]string, len(vals))
	for i, v := range vals {
		q[i] = strconv.Quote(v)
	}
	return "[" + strings.Join(q, ", ") + "]"
}

// excluded reports whether a flag of f's mutually exclusive groups is set
// already (by the command line, or by a source applied before).
func excluded(fs *pflag.FlagSet, f *pflag.Flag, seen map[*pflag.Flag]Setting) bool {
	for _, group := range f.Annotations[mutuallyExclusive] {
		for _, name := range strings.Fields(group) {
			o := fs.Lookup(name)
			if o != nil && o != f && (o.Changed || seen[o].Source != "" && seen[o].Source != FromDefault) {
				return true
			}
		}
	}
	return false
}

// set gives f the values vals as if from the command line (f.Changed, so
// that required flags and flag groups count it).
func set(fs *pflag.FlagSet, f *pflag.Flag, vals []string) error {
	sv, ok := f.Value.(pflag.SliceValue)
	if !ok {
		if len(vals) != 1 {
			return fmt.Errorf("--%s takes one value, not a list", f.Name)
		}
		return fs.Set(f.Name, vals[0])
	}
	// Set marks the flag changed and replaces the default; Replace then
	// puts the exact list (Set would split a value with a comma).
	if err := fs.Set(f.Name, ""); err != nil {
		return err
	}
	return sv.Replace(vals)
}

// values turns a TOML value into flag arguments.
func values(v any, f *pflag.Flag) ([]string, error) {
	_, slice := f.Value.(pflag.SliceValue)
	if list, ok := v.([]any); ok {
		if !slice {
			return nil, fmt.Errorf("a list, but --%s takes one value", f.Name)
		}
		out := make([]string, 0, len(list))
		for _, e := range list {
			s, err := scalar(e)
			if err != nil {
				return nil, fmt.Errorf("in the list: %w", err)
			}
			out = append(out, s)
		}
		return out, nil
	}
	s, err := scalar(v)
	if err != nil {
		return nil, err
	}
	return []string{s}, nil
}

func scalar(v any) (string, error) {
	switch x := v.(type) {
	case string:
		return x, nil
	case bool:
		return strconv.FormatBool(x), nil
	case int64:
		return strconv.FormatInt(x, 10), nil
	case float64:
		return strconv.FormatFloat(x, 'g', -1, 64), nil
	default:
		return "", fmt.Errorf("want a string, number or boolean, not %T", v)
	}
}

// envValues turns an environment variable into flag arguments: a
// repeatable flag's is a comma-separated list.
func envValues(v string, f *pflag.Flag) ([]string, error) {
	if _, slice := f.Value.(pflag.SliceValue); !slice {
		return []string{v}, nil
	}
	r := csv.NewReader(strings.NewReader(v))
	r.FieldsPerRecord = -1
	vals, err := r.Read()
	if err != nil {
		return nil, fmt.Errorf("want a comma-separated list: %w", err)
	}
	return vals, nil
}

// EnvName is the environment variable of flag f of cmd: PGPORTER_, the
// path of the command that defines f and f's name, upper case, with
// underscores: PGPORTER_MOVER_SERVE_LISTEN, PGPORTER_HOME.
func EnvName(cmd *cobra.Command, f *pflag.Flag) string {
	parts := append(commandPath(owner(cmd, f)), f.Name)
	return EnvPrefix + strings.ToUpper(strings.ReplaceAll(strings.Join(parts, "_"), "-", "_"))
}

func fileKey(c *cobra.Command, name string) string {
	return strings.Join(append(commandPath(c), name), ".")
}

// owner is the command that defines f, a flag of cmd: the ancestor whose
// persistent flag it is, or cmd.
func owner(cmd *cobra.Command, f *pflag.Flag) *cobra.Command {
	for c := cmd; c != nil; c = c.Parent() {
		if c.PersistentFlags().Lookup(f.Name) == f {
			return c
		}
	}
	return cmd
}

// ownFlag returns cmd's flag name if cmd defines it (not inherited), and
// the file may set it.
func ownFlag(cmd *cobra.Command, name string) *pflag.Flag {
	f := cmd.PersistentFlags().Lookup(name)
	if f == nil {
		f = cmd.LocalNonPersistentFlags().Lookup(name)
	}
	if f == nil || !settable(f) {
		return nil
	}
	return f
}

func ownFlagNames(cmd *cobra.Command) []string {
	var names []string
	for _, fs := range []*pflag.FlagSet{cmd.PersistentFlags(), cmd.LocalNonPersistentFlags()} {
		fs.VisitAll(func(f *pflag.Flag) {
			if settable(f) {
				names = append(names, f.Name)
			}
		})
	}
	return names
}

func subcommand(cmd *cobra.Command, name string) *cobra.Command {
	for _, c := range cmd.Commands() {
		if c.Name() == name {
			return c
		}
	}
	return nil
}

func subcommandNames(cmd *cobra.Command) []string {
	var names []string
	for _, c := range cmd.Commands() {
		names = append(names, c.Name())
	}
	return names
}

// commandPath is the names of cmd and its ancestors below the root.
func commandPath(cmd *cobra.Command) []string {
	var path []string
	for c := cmd; c.HasParent(); c = c.Parent() {
		path = append([]string{c.Name()}, path...)
	}
	return path
}

// Name is what a flag is called in the environment and in the file.
type Name struct {
	Command string // "pgporter mover serve"
	Flag    string
	Env     string
	Key     string
}

// Names lists the names of every flag the file and the environment may set,
// each once, at the command that defines it, under root.
func Names(root *cobra.Command) []Name {
	var out []Name
	var walk func(c *cobra.Command)
	walk = func(c *cobra.Command) {
		for _, fs := range []*pflag.FlagSet{c.PersistentFlags(), c.LocalNonPersistentFlags()} {
			fs.VisitAll(func(f *pflag.Flag) {
				if settable(f) {
					out = append(out, Name{Command: c.CommandPath(), Flag: f.Name, Env: EnvName(c, f), Key: fileKey(c, f.Name)})
				}
			})
		}
		for _, sub := range c.Commands() {
			walk(sub)
		}
	}
	walk(root)
	return out
}

// closest returns the name in names nearest to s, if it is near enough to
// be a typo of it.
func closest(s string, names []string) string {
	best, bestD := "", 3
	for _, n := range names {
		if d := distance(s, n); d < bestD {
			best, bestD = n, d
		}
	}
	return best
}

// distance is the Levenshtein distance of a and b.
func distance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}
