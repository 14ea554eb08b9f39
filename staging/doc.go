// Package staging runs the staging host's part of an export: the FUSE
// filesystem of a restore point with its copy-on-write layer, control of a
// throwaway PostgreSQL instance on it, the pre-checks (credentials,
// privileges, space) and the pg_dump runner.
//
// It is not the orchestrator: it does what it is told, and journals what it
// started so that a restarted mover can stop it.
package staging
