package chunk_test

import (
	"encoding/hex"
	"encoding/json"
	"errors"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
	"github.com/zeebo/blake3"

	"github.com/pgporter/pgporter/chunkstore/chunk"
	"github.com/pgporter/pgporter/internal/synth"
)

func TestSum(t *testing.T) {
	// Lengths around BLAKE3's 64-byte block and 1 KiB chunk, where
	// implementations switch code paths.
	for _, n := range []int{0, 1, 63, 64, 65, 1023, 1024, 1025, 8 << 10, 64<<10 + 3, 1 << 20} {
		data := synth.Random(uint64(n), n)
		require.Equal(t, blake3.Sum256(data), [32]byte(chunk.Sum(data)), "length %d", n)
	}
	// The BLAKE3 test vector for empty input pins the hash function itself.
	require.Equal(t, "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262", chunk.Sum(nil).String())
}

func TestIDText(t *testing.T) {
	id := chunk.Sum([]byte("pgporter"))
	s := id.String()
	require.Len(t, s, 2*chunk.IDSize)
	require.Equal(t, strings.ToLower(s), s)
	require.Equal(t, hex.EncodeToString(id[:]), s)
	require.Equal(t, s[:12], id.Short())

	got, err := chunk.ParseID(s)
	require.NoError(t, err)
	require.Equal(t, id, got)
	got, err = chunk.ParseID(strings.ToUpper(s))
	require.NoError(t, err, "upper-case hex")
	require.Equal(t, id, got)

	text, err := id.MarshalText()
	require.NoError(t, err)
	require.Equal(t, s, string(text))
	var back chunk.ID
	require.NoError(t, back.UnmarshalText(text))
	require.Equal(t, id, back)

	// IDs are JSON strings, and work as map keys.
	type doc struct {
		ID  chunk.ID         `json:"id"`
		Map map[chunk.ID]int `json:"map"`
	}
	in := doc{ID: id, Map: map[chunk.ID]int{id: 1, chunk.Sum(nil): 2}}
	b, err := json.Marshal(in)
	require.NoError(t, err)
	require.Contains(t, string(b), `"id":"`+s+`"`)
	var out doc
	require.NoError(t, json.Unmarshal(b, &out))
	require.Equal(t, in, out)
}

func TestParseIDErrors(t *testing.T) {
	valid := chunk.Sum(nil).String()
	for _, tc := range []struct {
		name, in string
	}{
		{"empty", ""},
		{"short", valid[:63]},
		{"long", valid + "0"},
		{"half", valid[:32]},
		{"non-hex", "g" + valid[1:]},
		{"space", " " + valid[1:]},
		{"prefix", "0x" + valid[2:]},
		{"multibyte", "é" + valid[2:]},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := chunk.ParseID(tc.in)
			require.Error(t, err)
			require.Contains(t, err.Error(), "chunkstore: parsing ID")

			// A failed UnmarshalText leaves the ID as it was.
			id := chunk.Sum([]byte("kept"))
			require.Error(t, id.UnmarshalText([]byte(tc.in)))
			require.Equal(t, chunk.Sum([]byte("kept")), id)
		})
	}
	var id chunk.ID
	require.Error(t, json.Unmarshal([]byte(`"abc"`), &id))
}

func TestIDIsZero(t *testing.T) {
	require.True(t, chunk.ID{}.IsZero())
	require.False(t, chunk.Sum(nil).IsZero(), "the empty chunk has a real ID")
	var id chunk.ID
	id[31] = 1
	require.False(t, id.IsZero())
}

func TestVerifyContent(t *testing.T) {
	data := synth.Random(21, 5000)
	id := chunk.Sum(data)
	require.NoError(t, chunk.VerifyContent(id, data))
	require.NoError(t, chunk.VerifyContent(chunk.Sum(nil), nil))

	for _, tc := range []struct {
		name string
		data []byte
	}{
		{"flipped bit", func() []byte { b := append([]byte{}, data...); b[2500] ^= 0x10; return b }()},
		{"truncated", data[:len(data)-1]},
		{"extended", append(append([]byte{}, data...), 0)},
		{"empty", nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := chunk.VerifyContent(id, tc.data)
			require.Error(t, err)
			var ce *chunk.CorruptChunkError
			require.True(t, errors.As(err, &ce), "want *CorruptChunkError, got %T", err)
			require.Equal(t, id, ce.ID)
			require.ErrorIs(t, err, chunk.ErrHashMismatch)
			require.NotErrorIs(t, err, chunk.ErrNotFound)
			require.Contains(t, err.Error(), id.String())
		})
	}
}

func TestCorruptChunkErrorWraps(t *testing.T) {
	cause := errors.New("bad record")
	err := error(&chunk.CorruptChunkError{ID: chunk.Sum(nil), Err: cause})
	require.ErrorIs(t, err, cause)
	require.Contains(t, err.Error(), "bad record")
}
