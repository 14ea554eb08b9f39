package chunkstore_test

import (
	"os"
	"testing"

	"github.com/pgporter/pgporter/internal/s3test"
)

// TestMain stops the S3 server the bucket tests share (s3test.Shared).
func TestMain(m *testing.M) { os.Exit(s3test.Main(m)) }
