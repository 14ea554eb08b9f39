package chunkstore_test

import (
	"encoding/json"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/pgporter/pgporter/chunkstore"
)

func TestParamsValidate(t *testing.T) {
	const gear = chunkstore.AlgorithmGearV1
	for _, tc := range []struct {
		name    string
		p       chunkstore.Params
		wantErr string // substring; empty means valid
	}{
		{"zero is default", chunkstore.Params{}, ""},
		{"default", chunkstore.DefaultParams, ""},
		{"algorithm defaults", chunkstore.Params{Min: 1024, Avg: 4096, Max: 16384}, ""},
		{"smallest", chunkstore.Params{Algorithm: gear, Min: chunkstore.MinChunkFloor, Avg: 256, Max: 257}, ""},
		{"largest", chunkstore.Params{Algorithm: gear, Min: 1 << 20, Avg: 4 << 20, Max: chunkstore.MaxChunkCeil}, ""},
		{"non power of two min and max", chunkstore.Params{Algorithm: gear, Min: 1001, Avg: 2048, Max: 3333}, ""},

		{"unknown algorithm", chunkstore.Params{Algorithm: "rabin", Min: 1024, Avg: 4096, Max: 16384}, "unknown chunking algorithm"},
		{"algorithm case", chunkstore.Params{Algorithm: "FASTCDC-GEAR-V1", Min: 1024, Avg: 4096, Max: 16384}, "unknown chunking algorithm"},
		{"min below floor", chunkstore.Params{Algorithm: gear, Min: chunkstore.MinChunkFloor - 1, Avg: 4096, Max: 16384}, "below"},
		{"min zero", chunkstore.Params{Algorithm: gear, Avg: 4096, Max: 16384}, "below"},
		{"min negative", chunkstore.Params{Algorithm: gear, Min: -1, Avg: 4096, Max: 16384}, "below"},
		{"max above ceil", chunkstore.Params{Algorithm: gear, Min: 1 << 20, Avg: 4 << 20, Max: chunkstore.MaxChunkCeil + 1}, "above"},
		{"min equals avg", chunkstore.Params{Algorithm: gear, Min: 4096, Avg: 4096, Max: 16384}, "min < avg < max"},
		{"min above avg", chunkstore.Params{Algorithm: gear, Min: 8192, Avg: 4096, Max: 16384}, "min < avg < max"},
		{"avg equals max", chunkstore.Params{Algorithm: gear, Min: 1024, Avg: 4096, Max: 4096}, "min < avg < max"},
		{"max below avg", chunkstore.Params{Algorithm: gear, Min: 1024, Avg: 4096, Max: 2048}, "min < avg < max"},
		{"avg missing", chunkstore.Params{Algorithm: gear, Min: 1024, Max: 16384}, "min < avg < max"},
		{"avg not power of two", chunkstore.Params{Algorithm: gear, Min: 1024, Avg: 3000, Max: 16384}, "not a power of two"},
		{"avg power of two plus one", chunkstore.Params{Algorithm: gear, Min: 1024, Avg: 4097, Max: 16384}, "not a power of two"},
		{"avg below 256", chunkstore.Params{Algorithm: gear, Min: 64, Avg: 128, Max: 1024}, "below 256"},
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
			_, err = chunkstore.NewChunker(nil, tc.p)
			require.Error(t, err)
			_, err = chunkstore.NewAnalyzer(tc.p, chunkstore.LevelNone)
			require.Error(t, err)
		})
	}
}

func TestParamsString(t *testing.T) {
	require.Equal(t, "fastcdc-gear-v1 16384/65536/262144", chunkstore.DefaultParams.String())
	require.Equal(t, chunkstore.DefaultParams.String(), chunkstore.Params{}.String())
	require.Equal(t, "fastcdc-gear-v1 1024/4096/16384", chunkstore.Params{Min: 1024, Avg: 4096, Max: 16384}.String())
}

// TestParamsJSON pins the manifest encoding: both ends of a transfer must
// read the same field names.
func TestParamsJSON(t *testing.T) {
	b, err := json.Marshal(chunkstore.DefaultParams)
	require.NoError(t, err)
	require.JSONEq(t, `{"algorithm":"fastcdc-gear-v1","min":16384,"avg":65536,"max":262144}`, string(b))
	var p chunkstore.Params
	require.NoError(t, json.Unmarshal(b, &p))
	require.Equal(t, chunkstore.DefaultParams, p)
}
