package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"strconv"

	"github.com/spf13/cobra"
)

// output is how a command's results and logs are written.
//
// It keeps the promise of --json: stdout holds one JSON object and nothing
// else, on success and on failure. While a command runs with --json,
// globals.stdout is stderr, so that every human line a command prints goes
// there; the command hands its object to writeJSON, and finish prints it,
// with "error", "code" and "kind" added on failure.
type output struct {
	logFormat  string    // --log-format: text or json
	jsonOut    io.Writer // the real stdout, while --json is on; nil otherwise
	jsonResult []byte    // the object the command reported, if any
}

// jsonFlagOn reports whether cmd has a --json flag and it is set.
func jsonFlagOn(cmd *cobra.Command) bool {
	if cmd == nil {
		return false
	}
	f := cmd.Flags().Lookup("json")
	return f != nil && f.Value.Type() == "bool" && f.Value.String() == "true"
}

// argsWantJSON reports whether args ask for --json before a "--": for a
// command line that failed before its flags were parsed.
func argsWantJSON(args []string) bool {
	for _, a := range args {
		switch a {
		case "--":
			return false
		case "--json", "--json=true":
			return true
		}
	}
	return false
}

// startOutput sends human lines to stderr when cmd runs with --json.
func (g *globals) startOutput(cmd *cobra.Command) {
	if jsonFlagOn(cmd) && g.jsonOut == nil {
		g.jsonOut, g.stdout = g.stdout, g.stderr
	}
}

// writeJSON reports v, the command's result, as the JSON object of
// stdout. Without --json it prints v as the last line of stdout.
func (g *globals) writeJSON(v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return fmt.Errorf("encoding JSON: %w", err)
	}
	if g.jsonOut == nil {
		_, err = fmt.Fprintf(g.stdout, "%s\n", b)
		return err
	}
	g.jsonResult = b
	return nil
}

// finish prints the JSON object of a --json run, if it is one, and returns
// the exit code of err (exitCode prints the human line on stderr).
func (g *globals) finish(cmd *cobra.Command, args []string, stdout io.Writer, err error) int {
	code := exitCode(err, g.stderr, g.log)
	if g.jsonOut == nil && !(err != nil && (jsonFlagOn(cmd) || argsWantJSON(args))) {
		return code
	}
	obj := g.jsonResult
	if err != nil {
		obj = withError(obj, userMessage(err), code)
	}
	if obj != nil {
		fmt.Fprintf(stdout, "%s\n", obj)
	}
	return code
}

// withError returns the JSON object obj (or an empty one) with "error",
// "code" and "kind" set, its other members kept in their order.
func withError(obj []byte, msg string, code int) []byte {
	type member struct {
		key string
		val json.RawMessage
	}
	var members []member
	if len(obj) > 0 {
		dec := json.NewDecoder(bytes.NewReader(obj))
		if t, err := dec.Token(); err == nil && t == json.Delim('{') {
			for dec.More() {
				kt, err := dec.Token()
				if err != nil {
					break
				}
				var v json.RawMessage
				if err := dec.Decode(&v); err != nil {
					break
				}
				k, _ := kt.(string)
				switch k {
				case "error", "code", "kind":
				default:
					members = append(members, member{k, v})
				}
			}
		}
	}
	m, _ := json.Marshal(msg)
	members = append(members,
		member{"error", m},
		member{"code", json.RawMessage(strconv.Itoa(code))},
		member{"kind", json.RawMessage(strconv.Quote(exitKinds[code]))})
	var b bytes.Buffer
	b.WriteByte('{')
	for i, mb := range members {
		if i > 0 {
			b.WriteByte(',')
		}
		k, _ := json.Marshal(mb.key)
		b.Write(k)
		b.WriteByte(':')
		b.Write(mb.val)
	}
	b.WriteByte('}')
	return b.Bytes()
}

// newLogger returns the logger of --log-level and --log-format, on w.
func newLogger(w io.Writer, level slog.Level, format string) (*slog.Logger, error) {
	opts := &slog.HandlerOptions{Level: level}
	switch format {
	case "", "text":
		return slog.New(slog.NewTextHandler(w, opts)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(w, opts)), nil
	}
	return nil, usagef("--log-format %q: want text or json", format)
}
