package main

import "github.com/spf13/cobra"

func newSendCmd(_ *globals) *cobra.Command {
	return stub("send --to ADDR --peer PEER_ID SRC_DIR DEST", "Send a directory to a target mover, resumably", cobra.ArbitraryArgs)
}
