package main

import (
	"fmt"
	"os"
	"strconv"

	"github.com/spf13/pflag"

	"github.com/pgporter/pgporter/internal/bytesize"
)

// cacheSizeEnv is the variable that bounds the pack blocks a host keeps on
// disk for an s3:// repository (chunkstore.LocalOptions.DiskCacheBytes).
const cacheSizeEnv = "PGPORTER_CACHE_SIZE"

// cacheSizeValue is --cache-size. It sets PGPORTER_CACHE_SIZE in this
// process's environment as it is parsed, rather than travelling in an
// options struct: the commands open their repository in many places, most
// of them indirectly (an export's source, a mover's repository hold, the
// background process of a publication, a mover's jobs), and the variable
// reaches all of them, the processes they start included.
type cacheSizeValue struct{ s string }

var _ pflag.Value = (*cacheSizeValue)(nil)

func (v *cacheSizeValue) String() string { return v.s }
func (v *cacheSizeValue) Type() string   { return "size" }

func (v *cacheSizeValue) Set(s string) error {
	n, err := bytesize.Parse(s)
	if err != nil {
		return err
	}
	if err := os.Setenv(cacheSizeEnv, strconv.FormatInt(n, 10)); err != nil {
		return fmt.Errorf("setting %s: %w", cacheSizeEnv, err)
	}
	v.s = s
	return nil
}

// addCacheSizeFlag registers --cache-size on f.
func addCacheSizeFlag(f *pflag.FlagSet) {
	f.Var(&cacheSizeValue{}, "cache-size", "with an s3:// repository: bound of the pack blocks this host keeps on disk, in its repository cache, for every pgporter process reading the repository (e.g. 512MiB, 2GiB; 0 for none; default $"+cacheSizeEnv+", else 1GiB)")
}
