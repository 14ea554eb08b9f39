package fec

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// link carries an Encoder's frames to a Decoder, dropping the frames
// whose sequence numbers drop says.
type link struct {
	mu   sync.Mutex // guards seq, got
	seq  int
	drop func(seq int, frame []byte) bool
	dec  *Decoder
	got  [][]byte
}

func newLink(k int, drop func(int, []byte) bool) (*Encoder, *link) {
	l := &link{drop: drop}
	l.dec = NewDecoder(func(p []byte) {
		l.mu.Lock()
		l.got = append(l.got, bytes.Clone(p))
		l.mu.Unlock()
	})
	enc := NewEncoder(k, func(f []byte) error {
		l.mu.Lock()
		seq := l.seq
		l.seq++
		l.mu.Unlock()
		if l.drop != nil && l.drop(seq, f) {
			return nil
		}
		l.dec.Handle(bytes.Clone(f))
		return nil
	})
	return enc, l
}

func (l *link) received() [][]byte {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([][]byte(nil), l.got...)
}

func datagrams(n int, seed uint64) [][]byte {
	r := rand.New(rand.NewPCG(seed, 1))
	out := make([][]byte, n)
	for i := range out {
		p := make([]byte, 1+r.IntN(MaxPayload))
		for j := range p {
			p[j] = byte(r.Uint32())
		}
		p[0] = 0x40 | p[0]&0x3f // a QUIC short header's first byte
		out[i] = p
	}
	return out
}

// TestOneLossPerGroupRepaired drops one data frame of every group: each is
// rebuilt, and every datagram arrives once, in the order sent.
func TestOneLossPerGroupRepaired(t *testing.T) {
	const k = 8
	in := datagrams(10*k, 1)
	// Frames of a group: k data then the parity, k+1 a group.
	enc, l := newLink(k, func(seq int, f []byte) bool {
		return f[0] == TypeData && seq%(k+1) == (seq/(k+1))%k
	})
	// No group closed early nor given up by the clock: the drops count
	// frames in full groups. Under -race on a loaded machine, a pause of
	// MaxSpan between two writes once closed a group early, and the drops
	// fell two to a group (CI run here).
	enc.span, l.dec.hold = time.Hour, time.Hour
	for _, p := range in {
		require.NoError(t, enc.Write(p))
	}
	require.Equal(t, in, l.received())
	st := l.dec.Stats()
	require.EqualValues(t, 10, st.Recovered)
	require.EqualValues(t, 0, st.Lost)
	require.EqualValues(t, 10, enc.Parity())
}

// TestTwoLossesReachTheReceiver drops two data frames of one group: the
// parity cannot rebuild them, and the rest of the group is handed on
// when the parity comes, in order.
func TestTwoLossesReachTheReceiver(t *testing.T) {
	const k = 8
	in := datagrams(2*k, 2)
	enc, l := newLink(k, func(seq int, f []byte) bool { return seq == 2 || seq == 5 })
	for _, p := range in {
		require.NoError(t, enc.Write(p))
	}
	var want [][]byte
	for i, p := range in {
		if i != 2 && i != 5 {
			want = append(want, p)
		}
	}
	require.Equal(t, want, l.received())
	st := l.dec.Stats()
	require.EqualValues(t, 0, st.Recovered)
	require.EqualValues(t, 2, st.Lost)
}

// TestPartialGroupParity: a group left open is closed by the Encoder's
// timer, so a loss among a slow sender's last datagrams is repaired.
func TestPartialGroupParity(t *testing.T) {
	in := datagrams(3, 3)
	enc, l := newLink(16, func(seq int, f []byte) bool { return seq == 2 })
	for _, p := range in {
		require.NoError(t, enc.Write(p))
	}
	require.Eventually(t, func() bool { return len(l.received()) == 3 }, 5*time.Second, time.Millisecond)
	require.Equal(t, in, l.received())
	require.EqualValues(t, 1, l.dec.Stats().Recovered)
	enc.Close()
}

// TestHoldGivesUp: when the parity of a group with a gap is lost too, the
// held datagrams are handed on after Hold, not kept.
func TestHoldGivesUp(t *testing.T) {
	const k = 4
	in := datagrams(k, 4)
	enc, l := newLink(k, func(seq int, f []byte) bool { return seq == 0 || f[0] == TypeParity })
	for _, p := range in {
		require.NoError(t, enc.Write(p))
	}
	require.Empty(t, l.received(), "datagrams after the gap are held")
	require.Eventually(t, func() bool { return len(l.received()) == k-1 }, 5*time.Second, time.Millisecond)
	require.Equal(t, in[1:], l.received())
}

// TestRandomLoss sends through 1 % random loss: far fewer losses reach the
// receiver than the link made, and what arrives is what was sent, in order.
func TestRandomLoss(t *testing.T) {
	r := rand.New(rand.NewPCG(5, 5))
	dropped := 0
	enc, l := newLink(8, func(int, []byte) bool {
		if r.Float64() < 0.01 {
			dropped++
			return true
		}
		return false
	})
	in := datagrams(4000, 6)
	for _, p := range in {
		require.NoError(t, enc.Write(p))
	}
	enc.Close()
	l.dec.Close()
	got := l.received()
	// In order: got is a subsequence of in.
	j := 0
	for _, p := range got {
		for j < len(in) && !bytes.Equal(in[j], p) {
			j++
		}
		require.Less(t, j, len(in), "a datagram out of order or not sent")
		j++
	}
	lost := len(in) - len(got)
	t.Logf("link dropped %d frames, %d datagrams lost, %d repaired", dropped, lost, l.dec.Stats().Recovered)
	require.Greater(t, dropped, 20)
	require.Less(t, lost*5, dropped, "repair should remove most losses")
}

// TestHostileFrames: malformed frames are counted and dropped; none
// panics or is handed on.
func TestHostileFrames(t *testing.T) {
	var got int
	d := NewDecoder(func([]byte) { got++ })
	defer d.Close()
	for _, f := range [][]byte{
		nil,
		{TypeData},
		{TypeData, 0, 0, 0, 0, 0, 1},                  // k 1
		{TypeData, 0, 0, 0, 0, 0, 200},                // k too large
		{TypeData, 0, 0, 0, 0, 40, 8, 1},              // index past MaxGroup
		{TypeParity, 0, 0, 0, 0, 0, 8, 0},             // covers no datagram
		{TypeParity, 0, 0, 0, 0, 3, 8},                // no length field
		{0x40, 0, 0, 0, 0, 0, 8, 1, 2, 3},             // not a frame
		{TypeParity, 0, 0, 0, 0, 2, 8, 0xff, 0xff, 1}, // length beyond its bytes
	} {
		d.Handle(f)
	}
	require.Zero(t, got)
	require.Positive(t, d.Stats().Dropped)
}

func FuzzDecoder(f *testing.F) {
	f.Add([]byte{TypeData, 0, 0, 0, 1, 0, 8, 0x41, 1}, []byte{TypeParity, 0, 0, 0, 1, 2, 8, 0, 3, 1, 2, 3})
	f.Fuzz(func(t *testing.T, a, b []byte) {
		d := NewDecoder(func(p []byte) {
			if len(p) > MaxPayload+2 {
				panic(fmt.Sprintf("delivered %d bytes", len(p)))
			}
		})
		defer d.Close()
		d.Handle(a)
		d.Handle(b)
		d.Handle(a)
	})
}
