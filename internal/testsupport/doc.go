// Package testsupport holds the test fixtures shared by every package's tests:
// a PostgreSQL cluster fixture, network-namespace hosts, a fault-injecting
// proxy. It is imported only by tests.
package testsupport
