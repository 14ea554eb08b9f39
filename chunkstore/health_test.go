package chunkstore_test

import (
	"bytes"
	"testing"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/stretchr/testify/require"

	"github.com/pgporter/pgporter/chunkstore"
	"github.com/pgporter/pgporter/internal/s3test"
)

// TestReadHealthBucket: the size of a repository in a bucket is the sum
// of its objects' sizes (counted here by the raw client), and grows with
// a backup; an object outside the prefix does not count. It was 0 before.
func TestReadHealthBucket(t *testing.T) {
	srv := s3test.Shared(t)
	srv.SetEnv(t)
	ctx := t.Context()
	bucket := srv.NewBucket(t)
	url := "s3://" + bucket + "/repo"
	c := srv.Client(t, srv.Endpoint)
	_, err := c.PutObject(ctx, &s3.PutObjectInput{Bucket: &bucket, Key: aws.String("other/big"), Body: bytes.NewReader(make([]byte, 1<<20))})
	require.NoError(t, err)
	sum := func() int64 {
		t.Helper()
		var n int64
		pages := s3.NewListObjectsV2Paginator(c, &s3.ListObjectsV2Input{Bucket: &bucket, Prefix: aws.String("repo/")})
		for pages.HasMorePages() {
			page, err := pages.NextPage(ctx)
			require.NoError(t, err)
			for _, o := range page.Contents {
				n += aws.ToInt64(o.Size)
			}
		}
		return n
	}

	r, err := chunkstore.OpenRepo(ctx, url, nil)
	require.NoError(t, err)
	h, err := chunkstore.ReadHealth(ctx, url)
	require.NoError(t, err)
	empty := h.Bytes
	require.Equal(t, sum(), empty)

	_, err = r.Backup(ctx, fakeDataDir(t), chunkstore.BackupOptions{})
	require.NoError(t, err)
	require.NoError(t, r.Close())
	h, err = chunkstore.ReadHealth(ctx, url)
	require.NoError(t, err)
	require.Positive(t, h.Bytes)
	require.Greater(t, h.Bytes, empty)
	require.Equal(t, sum(), h.Bytes)
}
