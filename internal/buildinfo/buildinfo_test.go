package buildinfo

import (
	"runtime/debug"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestLinkTimeValuesWin(t *testing.T) {
	bi := &debug.BuildInfo{Main: debug.Module{Version: "v9.9.9"}, Settings: []debug.BuildSetting{
		{Key: "vcs.revision", Value: "ffffffffffffffff"}, {Key: "vcs.time", Value: "2020-01-01T00:00:00Z"},
	}}
	in := from("v0.7.0-3-gabc1234", "abc1234def5678abc", "2026-12-06T10:00:00Z", bi)
	require.Equal(t, "v0.7.0-3-gabc1234", in.Version)
	require.Equal(t, "abc1234def5678abc", in.Commit)
	require.Equal(t, "2026-12-06T10:00:00Z", in.Date)
	require.Equal(t, "v0.7.0-3-gabc1234 (abc1234def56)", in.Short())
	require.True(t, strings.HasPrefix(in.String(), "pgporter v0.7.0-3-gabc1234 (abc1234def56), built 2026-12-06T10:00:00Z with go"), in.String())
}

func TestFallsBackToTheToolchainsRecord(t *testing.T) {
	bi := &debug.BuildInfo{Main: debug.Module{Version: "(devel)"}, Settings: []debug.BuildSetting{
		{Key: "vcs.revision", Value: "0123456789abcdef0123"}, {Key: "vcs.time", Value: "2026-12-01T00:00:00Z"}, {Key: "vcs.modified", Value: "true"},
	}}
	in := from("", "", "", bi)
	require.Equal(t, "devel", in.Version)
	require.Equal(t, "0123456789abcdef0123", in.Commit)
	require.Equal(t, "2026-12-01T00:00:00Z", in.Date)
	require.True(t, in.Modified)
	require.Equal(t, "devel (0123456789ab, modified)", in.Short())

	in = from("", "", "", &debug.BuildInfo{Main: debug.Module{Version: "v1.2.3"}})
	require.Equal(t, "v1.2.3", in.Short(), "go install module@v1.2.3 records no VCS")
	require.Equal(t, "devel", from("", "", "", nil).Short())
	require.True(t, from("v0.7.0-dirty", "abc", "", nil).Modified)
	require.Equal(t, "v0.7.0-dirty (abc)", from("v0.7.0-dirty", "abc", "", nil).Short())
}
