package chunk_test

import (
	"encoding/json"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/pgporter/pgporter/chunkstore/chunk"
)

func TestParamsValidate(t *testing.T) {
	const gear = chunk.AlgorithmGearV1
	for _, tc := range []struct {
		name    string
		p       chunk.Params
		wantErr string // substring; empty means valid
	}{
		{"zero is default", chunk.Params{}, ""},
		{"default", chunk.DefaultParams, ""},
		{"algorithm defaults", chunk.Params{Min: 1024, Avg: 4096, Max: 16384}, ""},
		{"smallest", chunk.Params{Algorithm: gear, Min: chunk.MinChunkFloor, Avg: 256, Max: 257}, ""},
		{"largest", chunk.Params{Algorithm: gear, Min: 1 << 20, Avg: 4 << 20, Max: chunk.MaxChunkCeil}, ""},
		{"non power of two min and max", chunk.Params{Algorithm: gear, Min: 1001, Avg: 2048, Max: 3333}, ""},

		{"unknown algorithm", chunk.Params{Algorithm: "rabin", Min: 1024, Avg: 4096, Max: 16384}, "unknown chunking algorithm"},
		{"algorithm case", chunk.Params{Algorithm: "FASTCDC-GEAR-V1", Min: 1024, Avg: 4096, Max: 16384}, "unknown chunking algorithm"},
		{"min below floor", chunk.Params{Algorithm: gear, Min: chunk.MinChunkFloor - 1, Avg: 4096, Max: 16384}, "below"},
		{"min zero", chunk.Params{Algorithm: gear, Avg: 4096, Max: 16384}, "below"},
		{"min negative", chunk.Params{Algorithm: gear, Min: -1, Avg: 4096, Max: 16384}, "below"},
		{"max above ceil", chunk.Params{Algorithm: gear, Min: 1 << 20, Avg: 4 << 20, Max: chunk.MaxChunkCeil + 1}, "above"},
		{"min equals avg", chunk.Params{Algorithm: gear, Min: 4096, Avg: 4096, Max: 16384}, "min < avg < max"},
		{"min above avg", chunk.Params{Algorithm: gear, Min: 8192, Avg: 4096, Max: 16384}, "min < avg < max"},
		{"avg equals max", chunk.Params{Algorithm: gear, Min: 1024, Avg: 4096, Max: 4096}, "min < avg < max"},
		{"max below avg", chunk.Params{Algorithm: gear, Min: 1024, Avg: 4096, Max: 2048}, "min < avg < max"},
		{"avg missing", chunk.Params{Algorithm: gear, Min: 1024, Max: 16384}, "min < avg < max"},
		{"avg not power of two", chunk.Params{Algorithm: gear, Min: 1024, Avg: 3000, Max: 16384}, "not a power of two"},
		{"avg power of two plus one", chunk.Params{Algorithm: gear, Min: 1024, Avg: 4097, Max: 16384}, "not a power of two"},
		{"avg below 256", chunk.Params{Algorithm: gear, Min: 64, Avg: 128, Max: 1024}, "below 256"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.p.Validate()
			if tc.wantErr == "" {
				require.NoError(t, err)
				return
			}
			require.ErrorContains(t, err, tc.wantErr)
			require.ErrorContains(t, err, "chunkstore: ")
			// Every constructor refuses what Validate refuses.
			_, err = chunk.NewChunker(nil, tc.p)
			require.Error(t, err)
		})
	}
}

func TestParamsString(t *testing.T) {
	require.Equal(t, "fastcdc-gear-v1 16384/65536/262144", chunk.DefaultParams.String())
	require.Equal(t, chunk.DefaultParams.String(), chunk.Params{}.String())
	require.Equal(t, "fastcdc-gear-v1 1024/4096/16384", chunk.Params{Min: 1024, Avg: 4096, Max: 16384}.String())
}

// TestParamsJSON pins the manifest encoding: both ends of a transfer must
// read the same field names.
func TestParamsJSON(t *testing.T) {
	b, err := json.Marshal(chunk.DefaultParams)
	require.NoError(t, err)
	require.JSONEq(t, `{"algorithm":"fastcdc-gear-v1","min":16384,"avg":65536,"max":262144}`, string(b))
	var p chunk.Params
	require.NoError(t, json.Unmarshal(b, &p))
	require.Equal(t, chunk.DefaultParams, p)
}
