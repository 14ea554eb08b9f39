package mover

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
	"unicode"
	"unicode/utf8"
)

// PeerSeen is what the movers of a home last saw of a peer: the build it
// named in its Hello, and when. 'pgporter mover peers' shows it beside the
// trust list, so that an operator sees which peers run which release.
type PeerSeen struct {
	Software string    // as the peer's Hello named it, e.g. "pgporter 0.4.0 (1a2b3c4d5e6f)"; printable, at most 64 bytes
	Seen     time.Time // when a connection from or to it last completed its Hello
	// Repair is the loss repair group size a send to the peer last needed
	// (protocol 11, lossrepair.go), at RepairAt; 0 when none.
	Repair   int
	RepairAt time.Time
}

// Version returns the release and commit of a peer's Software, without the
// leading "pgporter ", or the whole string for another program.
func (p PeerSeen) Version() string {
	return strings.TrimPrefix(p.Software, "pgporter ")
}

const (
	peersSeenFileName = "peers-seen.json"
	peersSeenVersion  = 1
	maxPeersSeen      = 1024             // the oldest are dropped past it
	maxPeersSeenSize  = 1 << 20          // bytes of the file read at most
	peerSeenRefresh   = 10 * time.Minute // a peer's time is rewritten at most this often
)

type peersSeenFile struct {
	Version int                    `json:"version"`
	Peers   map[PeerID]peerSeenRec `json:"peers"`
}

type peerSeenRec struct {
	Software string    `json:"software"`
	Seen     time.Time `json:"seen"`
	Repair   int       `json:"repair,omitempty"`
	RepairAt time.Time `json:"repair_at,omitzero"`
}

// LoadPeersSeen returns what the movers of home saw of each peer, from
// home/peers-seen.json. The record only informs: a missing, unreadable or
// damaged file is an empty record, not an error.
func LoadPeersSeen(home string) map[PeerID]PeerSeen {
	out := map[PeerID]PeerSeen{}
	for id, r := range readPeersSeen(filepath.Join(home, peersSeenFileName)) {
		out[id] = PeerSeen(r)
	}
	return out
}

func readPeersSeen(path string) map[PeerID]peerSeenRec {
	f, err := os.Open(path)
	if err != nil {
		return map[PeerID]peerSeenRec{}
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, maxPeersSeenSize+1))
	if err != nil || len(data) > maxPeersSeenSize {
		return map[PeerID]peerSeenRec{}
	}
	var pf peersSeenFile
	if err := json.Unmarshal(data, &pf); err != nil || pf.Version != peersSeenVersion || pf.Peers == nil {
		return map[PeerID]peerSeenRec{}
	}
	for id, r := range pf.Peers {
		if id.IsZero() {
			delete(pf.Peers, id)
			continue
		}
		r.Software = cleanSoftware(r.Software) // the file may have been edited
		if r.Repair != 0 {
			r.Repair = min(max(r.Repair, fecMinK), fecMaxK)
		}
		pf.Peers[id] = r
	}
	return pf.Peers
}

// peersSeenNoted is what this process last wrote for each home and peer,
// so that a process with many connections to one peer writes once.
var peersSeenNoted = struct {
	mu sync.Mutex // guards m
	m  map[string]PeerSeen
}{m: map[string]PeerSeen{}}

// notePeerSeen records in home that a connection from or to peer completed
// its Hello, naming software (as checkHello quoted it). It writes the file
// only when the peer's software changed, or its time is older than
// peerSeenRefresh, so that connections cost no write each.
func notePeerSeen(home string, peer PeerID, quotedSoftware string) error {
	if home == "" || peer.IsZero() {
		return nil
	}
	sw, err := strconv.Unquote(quotedSoftware)
	if err != nil {
		sw = quotedSoftware
	}
	seen := PeerSeen{Software: cleanSoftware(sw), Seen: time.Now().UTC().Truncate(time.Second)}
	key := home + "\x00" + string(peer[:])
	peersSeenNoted.mu.Lock()
	last, ok := peersSeenNoted.m[key]
	if ok && last.Software == seen.Software && seen.Seen.Sub(last.Seen) < peerSeenRefresh {
		peersSeenNoted.mu.Unlock()
		return nil
	}
	peersSeenNoted.m[key] = seen
	peersSeenNoted.mu.Unlock()
	return writePeerSeen(home, peer, func(r *peerSeenRec) { r.Software, r.Seen = seen.Software, seen.Seen })
}

// writePeerSeen updates peer's entry in home's file with change under its
// lock file: read, change, write a temporary file and rename it over. Not
// synced: a crash at worst loses a record that the next connection writes
// again.
func writePeerSeen(home string, peer PeerID, change func(*peerSeenRec)) error {
	path := filepath.Join(home, peersSeenFileName)
	unlock, err := lockFile(path + ".lock")
	if err != nil {
		return fmt.Errorf("recording peer %s: %w", peer.Short(), err)
	}
	defer unlock()
	peers := readPeersSeen(path)
	r := peers[peer]
	change(&r)
	peers[peer] = r
	if len(peers) > maxPeersSeen {
		ids := make([]PeerID, 0, len(peers))
		for id := range peers {
			ids = append(ids, id)
		}
		slices.SortFunc(ids, func(a, b PeerID) int { return peers[a].Seen.Compare(peers[b].Seen) })
		for _, id := range ids[:len(ids)-maxPeersSeen] {
			delete(peers, id)
		}
	}
	data, err := json.MarshalIndent(peersSeenFile{Version: peersSeenVersion, Peers: peers}, "", "  ")
	if err != nil {
		return fmt.Errorf("recording peer %s: %w", peer.Short(), err)
	}
	f, err := os.CreateTemp(home, "."+peersSeenFileName+".tmp-")
	if err != nil {
		return fmt.Errorf("recording peer %s: %w", peer.Short(), err)
	}
	defer os.Remove(f.Name()) // fails harmlessly once renamed
	_, err = f.Write(append(data, '\n'))
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(f.Name(), path)
	}
	if err != nil {
		return fmt.Errorf("recording peer %s: %w", peer.Short(), err)
	}
	return nil
}

// cleanSoftware makes a peer's Software fit for a terminal: valid UTF-8,
// printable, at most 64 bytes.
func cleanSoftware(s string) string {
	s = strings.Map(func(r rune) rune {
		if unicode.IsPrint(r) {
			return r
		}
		return '?'
	}, strings.ToValidUTF8(s, "?"))
	for len(s) > 64 {
		_, n := utf8.DecodeLastRuneInString(s)
		s = s[:len(s)-n]
	}
	return s
}
