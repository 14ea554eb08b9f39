package main

import (
	"io"
	"os"
	"testing"

	"github.com/spf13/pflag"
	"github.com/stretchr/testify/require"
)

// --cache-size reaches the repository stores as PGPORTER_CACHE_SIZE, in
// bytes; a size that does not parse is refused at parsing, changing
// nothing.
func TestCacheSizeFlag(t *testing.T) {
	for _, c := range []struct {
		arg, want string
	}{{"512MiB", "536870912"}, {"2GiB", "2147483648"}, {"1.5G", "1610612736"}, {"0", "0"}} {
		t.Run(c.arg, func(t *testing.T) {
			t.Setenv(cacheSizeEnv, "unchanged")
			f := pflag.NewFlagSet("mount", pflag.ContinueOnError)
			addCacheSizeFlag(f)
			require.NoError(t, f.Parse([]string{"--cache-size", c.arg}))
			require.Equal(t, c.want, os.Getenv(cacheSizeEnv))
			require.Equal(t, c.arg, f.Lookup("cache-size").Value.String())
		})
	}
	t.Setenv(cacheSizeEnv, "unchanged")
	f := pflag.NewFlagSet("mount", pflag.ContinueOnError)
	f.SetOutput(io.Discard)
	addCacheSizeFlag(f)
	require.Error(t, f.Parse([]string{"--cache-size", "lots"}))
	require.Equal(t, "unchanged", os.Getenv(cacheSizeEnv))
	// Every command that reads a repository URL has it.
	root := newRootCmd(&globals{})
	for _, path := range [][]string{{"mount"}, {"export"}, {"publish"}, {"mover", "serve"}} {
		c, _, err := root.Find(path)
		require.NoError(t, err)
		require.NotNil(t, c.Flags().Lookup("cache-size"), "%v", path)
	}
}
