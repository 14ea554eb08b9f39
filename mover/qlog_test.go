package mover

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/quic-go/quic-go"
	"github.com/stretchr/testify/require"
)

// TestQlogTracer: $QLOGDIR unset traces nothing; set, each connection gets
// a qlog file there; a directory that cannot be made traces nothing and
// does not end the process (quic-go's own tracer would log.Fatal).
func TestQlogTracer(t *testing.T) {
	id := quic.ConnectionIDFromBytes([]byte{1, 2, 3, 4, 5, 6, 7, 8})
	t.Setenv("QLOGDIR", "")
	require.Nil(t, qlogTracer(context.Background(), true, id))

	dir := filepath.Join(t.TempDir(), "qlog")
	t.Setenv("QLOGDIR", dir)
	tr := qlogTracer(context.Background(), true, id)
	require.NotNil(t, tr)
	rec := tr.AddProducer()
	require.NoError(t, rec.Close())
	names, err := filepath.Glob(filepath.Join(dir, "*_client.sqlog"))
	require.NoError(t, err)
	require.Len(t, names, 1)

	file := filepath.Join(t.TempDir(), "a-file")
	require.NoError(t, os.WriteFile(file, nil, 0o644))
	t.Setenv("QLOGDIR", filepath.Join(file, "qlog"))
	require.Nil(t, qlogTracer(context.Background(), false, id))
}
