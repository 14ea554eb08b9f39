// Command pgporter exports PostgreSQL databases out of backups and moves the
// dumps between Linux hosts. See README.md and docs/ARCHITECTURE.md.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	quietQUICBufferWarning()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// quietQUICBufferWarning turns off quic-go's own log line about small UDP
// buffers: the mover checks them itself and warns once, through its logger,
// with the command that raises them (mover.UDPBufferHint).
func quietQUICBufferWarning() {
	os.Setenv("QUIC_GO_DISABLE_RECEIVE_BUFFER_WARNING", "true")
}
