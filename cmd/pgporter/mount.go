package main

import "github.com/spf13/cobra"

func newMountCmd(_ *globals) *cobra.Command {
	return stub("mount --repo DIR --restore-point ID|latest MOUNTPOINT", "Mount a restore point through FUSE with a copy-on-write layer", cobra.ArbitraryArgs)
}
