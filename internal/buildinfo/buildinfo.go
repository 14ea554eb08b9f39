// Package buildinfo says which build of pgporter this is: its release,
// commit and build date. `make build` sets them with -ldflags -X; a plain
// `go build` or `go install` falls back to what the Go toolchain recorded
// (debug.ReadBuildInfo: the module version and the VCS revision and time).
package buildinfo

import (
	"fmt"
	"runtime"
	"runtime/debug"
	"strings"
)

// Set at link time by `make build`:
//
//	-X github.com/pgporter/pgporter/internal/buildinfo.version=…
var (
	version string // the release, e.g. v0.7.0 or v0.7.0-12-gabc1234 (git describe)
	commit  string // full commit hash
	date    string // build date, RFC 3339
)

// Info is one build's identity.
type Info struct {
	Version   string `json:"version"`    // release, "devel" if unknown
	Commit    string `json:"commit"`     // commit hash, "" if unknown
	Date      string `json:"date"`       // build (or commit) date, "" if unknown
	Modified  bool   `json:"modified"`   // built from a tree with uncommitted changes
	GoVersion string `json:"go_version"` // the Go toolchain that built it
}

// Get returns this build's Info: the link-time values where set, else the
// toolchain's record.
func Get() Info {
	return from(version, commit, date, readBuildInfo())
}

var readBuildInfo = func() *debug.BuildInfo {
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return nil
	}
	return bi
}

func from(v, c, d string, bi *debug.BuildInfo) Info {
	in := Info{Version: v, Commit: c, Date: d, GoVersion: runtime.Version()}
	if bi != nil {
		if in.Version == "" && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
			in.Version = bi.Main.Version
		}
		for _, s := range bi.Settings {
			switch s.Key {
			case "vcs.revision":
				if in.Commit == "" {
					in.Commit = s.Value
				}
			case "vcs.time":
				if in.Date == "" {
					in.Date = s.Value
				}
			case "vcs.modified":
				in.Modified = s.Value == "true"
			}
		}
	}
	if strings.HasSuffix(in.Version, "-dirty") {
		in.Modified = true
	}
	if in.Version == "" {
		in.Version = "devel"
	}
	return in
}

// Short is the release and a short commit, e.g. "v0.7.0 (abc1234)" or
// "devel (abc1234, modified)": what a peer is told in Hello.
func (in Info) Short() string {
	c := in.Commit
	if len(c) > 12 {
		c = c[:12]
	}
	switch {
	case c == "":
		return in.Version
	case in.Modified && !strings.HasSuffix(in.Version, "-dirty"):
		return fmt.Sprintf("%s (%s, modified)", in.Version, c)
	}
	return fmt.Sprintf("%s (%s)", in.Version, c)
}

// String is the full line `pgporter version` prints.
func (in Info) String() string {
	s := "pgporter " + in.Short()
	if in.Date != "" {
		s += ", built " + in.Date
	}
	return s + " with " + in.GoVersion
}
