// Package orchestrator plans and drives export sessions: it journals every
// step in pebble, talks to the repository, staging and target movers, retries
// what failed, and cleans up. It also manages published instances.
//
// It holds no data path of its own: bytes move between movers.
package orchestrator
