package main

import (
	"context"
	"fmt"
	"os"

	"github.com/pgporter/pgporter/orchestrator"
)

// Descriptors that 'publish' hands its background process.
const (
	serveLockFD  = 3 // the publication's lock, held for the life of the process
	serveReadyFD = 4 // readiness pipe: "ready\n" or "error: REASON"
)

// runPublishServe is the background process of a publication,
// 'pgporter publish --serve ID', started by 'publish' and not meant for
// users (the flag is hidden). It is a flag of publish rather than a command
// of its own so that publishing stays in the files of publish.
func runPublishServe(ctx context.Context, g *globals, id string) error {
	lock, ready := os.NewFile(serveLockFD, "lock"), os.NewFile(serveReadyFD, "ready")
	for _, f := range []*os.File{lock, ready} {
		if _, err := f.Stat(); err != nil {
			return usagef("publish --serve is started by 'pgporter publish' with descriptors %d and %d: %v", serveLockFD, serveReadyFD, err)
		}
	}
	pb, err := orchestrator.NewPublisher(g.home, g.log)
	if err != nil {
		fmt.Fprintf(ready, "error: %v", err)
		return err
	}
	return pb.ServePublication(ctx, id, lock, ready)
}
