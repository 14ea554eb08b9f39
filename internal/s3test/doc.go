// Package s3test starts a real S3 server for tests: SeaweedFS on loopback,
// built and run by scripts/s3-server, with static credentials, a plain HTTP
// endpoint and an HTTPS one whose self-signed certificate the tests trust.
// Each Start is a server of its own, with its data in the test's temporary
// directory; it dies with the test binary. Shared is one server for a test
// binary's bucket tests, with its data in a temporary directory of its own,
// which the package's TestMain (Main) stops and removes; a binary killed
// first (a -timeout panic) takes weed along and leaves that directory.
//
// It is imported only by tests. It is not a fake: there is no in-memory S3
// here, and a test that needs the server skips without it, or fails when
// CI=true.
package s3test
