package objstore_test

import (
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/pgporter/pgporter/chunkstore/objstore"
)

func TestParseURL(t *testing.T) {
	for _, tc := range []struct {
		url, bucket, prefix, err string
	}{
		{url: "s3://bucket", bucket: "bucket"},
		{url: "s3://bucket/", bucket: "bucket"},
		{url: "s3://my.bucket-1/pg/prod/", bucket: "my.bucket-1", prefix: "pg/prod"},
		{url: "/var/repo", err: "want s3://BUCKET/PREFIX"},
		{url: "https://bucket/x", err: "want s3://BUCKET/PREFIX"},
		{url: "s3:bucket/x", err: "two slashes"},
		{url: "s3://key:secret@bucket/x", err: "credentials do not go in the URL"},
		{url: "s3://127.0.0.1:9000/bucket", err: "AWS_ENDPOINT_URL"},
		{url: "s3://bucket/x?region=eu", err: "no query"},
		{url: "s3://Bucket/x", err: "only lowercase"},
		{url: "s3://b/x", err: "3 to 63"},
		{url: "s3://-bucket/x", err: "begin and end"},
		{url: "s3://a..b/x", err: "two dots"},
		{url: "s3://bucket/../x", err: "invalid object name"},
		{url: "s3://bucket/a//b", err: "invalid object name"},
		{url: "s3://bucket/a/.tmp", err: "invalid object name"},
	} {
		t.Run(tc.url, func(t *testing.T) {
			bucket, prefix, err := objstore.ParseURL(tc.url)
			if tc.err != "" {
				require.ErrorContains(t, err, tc.err)
				require.ErrorIs(t, err, objstore.ErrBadURL)
				return
			}
			require.NoError(t, err)
			require.Equal(t, tc.bucket, bucket)
			require.Equal(t, tc.prefix, prefix)
		})
	}
}

func TestValidName(t *testing.T) {
	for _, name := range []string{"a", "packs/0a/0a1b2c.pack", "points/rp-20261206T161200Z-0001.json", "A_b-c.d"} {
		require.NoError(t, objstore.ValidName(name), name)
	}
}
