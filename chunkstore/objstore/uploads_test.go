package objstore_test

import (
	"fmt"
	"maps"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/stretchr/testify/require"

	"github.com/pgporter/pgporter/chunkstore/objstore"
	"github.com/pgporter/pgporter/internal/s3test"
)

// Uploads left by killed writers are found and aborted by their start
// time; a younger one, one outside the prefix and one whose key is no
// valid name are left alone. The raw client plays the killed writers.
func testStaleUploads(t *testing.T, srv *s3test.Server) {
	ctx := t.Context()
	c := srv.Client(t, srv.Endpoint)
	bucket := srv.NewBucket(t)
	b, err := objstore.NewS3(c, bucket, "repo", objstore.S3Options{PartSize: testPartSize, PageSize: testPageSize})
	require.NoError(t, err)
	start := func(key string) string {
		t.Helper()
		up, err := c.CreateMultipartUpload(ctx, &s3.CreateMultipartUploadInput{Bucket: &bucket, Key: &key})
		require.NoError(t, err)
		_, err = c.UploadPart(ctx, &s3.UploadPartInput{Bucket: &bucket, Key: &key, UploadId: up.UploadId,
			PartNumber: aws.Int32(1), Body: strings.NewReader("part one")})
		require.NoError(t, err)
		return aws.ToString(up.UploadId)
	}
	initiated := func(prefix string) map[string]time.Time {
		t.Helper()
		out := map[string]time.Time{}
		pages := s3.NewListMultipartUploadsPaginator(c, &s3.ListMultipartUploadsInput{Bucket: &bucket, Prefix: &prefix})
		for pages.HasMorePages() {
			page, err := pages.NextPage(ctx)
			require.NoError(t, err)
			for _, u := range page.Uploads {
				require.NotNil(t, u.Initiated, "%s: the server reports no start time", aws.ToString(u.Key))
				out[aws.ToString(u.Key)] = *u.Initiated
			}
		}
		return out
	}
	// More old ones than a page holds, so that the listing pages.
	var old []string
	for i := range 2*testPageSize + 1 {
		old = append(old, fmt.Sprintf("chunks/packs/%016x.pack", i))
		start("repo/" + old[i])
	}
	start("other/chunks/packs/0000000000000000.pack")
	start("repo/.junk")
	before := initiated("")
	last := slices.MaxFunc(slices.Collect(maps.Values(before)), time.Time.Compare)
	// The young one must start after the old ones by the server's clock,
	// which SeaweedFS reports in whole seconds: it is started again until
	// its start is a later second (at most a second of requests).
	const young = "repo/chunks/packs/ffffffffffffffff.pack"
	var cutoff time.Time
	for range 10000 {
		id := start(young)
		if cutoff = initiated(young)[young]; cutoff.After(last) {
			break
		}
		_, err := c.AbortMultipartUpload(ctx, &s3.AbortMultipartUploadInput{Bucket: &bucket, Key: aws.String(young), UploadId: &id})
		require.NoError(t, err)
	}
	require.True(t, cutoff.After(last), "the server's clock stands still at %v", last)

	// Behind WithRetry, As finds the S3 backend.
	s, ok := objstore.As[*objstore.S3](objstore.WithRetry(b, fast))
	require.True(t, ok)
	var stale []objstore.Upload
	for u, err := range s.StaleUploads(ctx, "", cutoff) {
		require.NoError(t, err)
		stale = append(stale, u)
	}
	var names []string
	for _, u := range stale {
		require.Equal(t, before["repo/"+u.Name], u.Initiated)
		names = append(names, u.Name)
	}
	require.Equal(t, old, names)
	for _, u := range stale {
		require.NoError(t, s.AbortUpload(ctx, u))
	}
	// Aborting twice is no error.
	require.NoError(t, s.AbortUpload(ctx, stale[0]))

	after := initiated("")
	require.Equal(t, []string{"other/chunks/packs/0000000000000000.pack", "repo/.junk", "repo/chunks/packs/ffffffffffffffff.pack"},
		slices.Sorted(maps.Keys(after)))

	// With the cut a day back, as prune has it, the young one stays.
	for u, err := range s.StaleUploads(ctx, "", time.Now().Add(-24*time.Hour)) {
		require.NoError(t, err)
		t.Errorf("stale: %+v", u)
	}
	_, ok = objstore.As[*objstore.S3](objstore.Backend(nil))
	require.False(t, ok)
}
