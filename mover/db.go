package mover

import (
	"errors"
	"fmt"
	"log/slog"

	"github.com/cockroachdb/pebble/v2"

	"github.com/pgporter/pgporter/internal/pebbledb"
)

// Formats of the mover's two stores (pebbledb.Options.Format).
const (
	moverStateFormat  = "pgporter-mover-state-1"
	senderStateFormat = "pgporter-sender-state-1"
)

// openDB opens (creating) the pebble database at dir, of format. A
// database already open in another process gives a *pebbledb.LockedError,
// which names that process.
func openDB(dir, format string, log *slog.Logger) (*pebbledb.DB, error) {
	db, err := pebbledb.Open(dir, pebbledb.Options{Log: log, Format: format})
	if err != nil {
		return nil, fmt.Errorf("opening state: %w", err)
	}
	return db, nil
}

// dbGet returns a copy of the value at key, or nil and false.
func dbGet(db *pebbledb.DB, key []byte) ([]byte, bool, error) {
	v, c, err := db.Get(key)
	if errors.Is(err, pebble.ErrNotFound) {
		return nil, false, nil
	}
	if err != nil {
		return nil, false, err
	}
	out := append([]byte(nil), v...)
	c.Close()
	return out, true, nil
}

// prefixEnd returns the smallest key greater than every key with prefix p.
func prefixEnd(p []byte) []byte {
	end := append([]byte(nil), p...)
	for i := len(end) - 1; i >= 0; i-- {
		end[i]++
		if end[i] != 0 {
			return end[:i+1]
		}
	}
	return nil
}
