// Package staging runs the staging host's part of an export or a
// publication: the FUSE filesystem of a restore point with its copy-on-write
// layer (which, for an export's throwaway instance, drops page writes that
// only set hint bits: MountOptions.DropHintWrites, hintbits.go), the overlay that keeps a publication's writes on disk, control of
// a PostgreSQL instance on them (Staged brings the three up and down in
// order), the pre-checks (credentials, privileges, space) and the pg_dump
// runner.
//
// It is not the orchestrator: it does what it is told, and journals what it
// started so that a restarted mover can stop it.
package staging
