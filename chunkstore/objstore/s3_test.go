package objstore_test

import (
	"io"
	"strings"
	"testing"

	"github.com/aws/aws-sdk-go-v2/aws"
	awshttp "github.com/aws/aws-sdk-go-v2/aws/transport/http"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/aws-sdk-go-v2/service/s3/types"
	"github.com/stretchr/testify/require"

	"github.com/pgporter/pgporter/chunkstore/objstore"
	"github.com/pgporter/pgporter/chunkstore/objstore/objstoretest"
	"github.com/pgporter/pgporter/internal/s3test"
)

const (
	testPartSize = objstore.MinPartSize
	testPageSize = 3
)

// One server for the package's S3 tests (a start costs about 10 s), a
// bucket per test.
func TestS3(t *testing.T) {
	srv := s3test.Start(t)
	t.Run("Conformance", func(t *testing.T) {
		objstoretest.Run(t, objstoretest.Config{
			New: func(t *testing.T) objstore.Backend {
				return newS3(t, srv, srv.Endpoint, "repo/one")
			},
			PartSize: testPartSize,
			PageSize: testPageSize,
		})
	})
	t.Run("ConformanceRetrying", func(t *testing.T) {
		objstoretest.Run(t, objstoretest.Config{
			New: func(t *testing.T) objstore.Backend {
				return objstore.WithRetry(newS3(t, srv, srv.Endpoint, ""), fast)
			},
			PartSize: testPartSize,
			PageSize: testPageSize,
		})
	})
	t.Run("IfNoneMatchOnComplete", func(t *testing.T) { testIfNoneMatchOnComplete(t, srv) })
	t.Run("OpenS3", func(t *testing.T) { testOpenS3(t, srv) })
	t.Run("Retry", func(t *testing.T) { testRetry(t, srv) })
	t.Run("ServerRestart", func(t *testing.T) { testServerRestart(t, srv) })
	t.Run("StaleUploads", func(t *testing.T) { testStaleUploads(t, srv) })
}

func newS3(t *testing.T, srv *s3test.Server, endpoint, prefix string) *objstore.S3 {
	t.Helper()
	b, err := objstore.NewS3(srv.Client(t, endpoint), srv.NewBucket(t), prefix,
		objstore.S3Options{PartSize: testPartSize, PageSize: testPageSize})
	require.NoError(t, err)
	return b
}

// SeaweedFS honours If-None-Match: * on CompleteMultipartUpload, not only
// on PUT: an object created while a multipart upload was under way makes
// the upload's completion fail with 412, which the S3 backend's check
// before the upload cannot see. The raw client plays the other writer.
func testIfNoneMatchOnComplete(t *testing.T, srv *s3test.Server) {
	ctx := t.Context()
	c := srv.Client(t, srv.Endpoint)
	bucket := srv.NewBucket(t)
	key := aws.String("obj")
	up, err := c.CreateMultipartUpload(ctx, &s3.CreateMultipartUploadInput{Bucket: &bucket, Key: key})
	require.NoError(t, err)
	part, err := c.UploadPart(ctx, &s3.UploadPartInput{Bucket: &bucket, Key: key, UploadId: up.UploadId,
		PartNumber: aws.Int32(1), Body: strings.NewReader("part one")})
	require.NoError(t, err)
	_, err = c.PutObject(ctx, &s3.PutObjectInput{Bucket: &bucket, Key: key, Body: strings.NewReader("first"), IfNoneMatch: aws.String("*")})
	require.NoError(t, err)
	_, err = c.CompleteMultipartUpload(ctx, &s3.CompleteMultipartUploadInput{Bucket: &bucket, Key: key, UploadId: up.UploadId,
		MultipartUpload: &types.CompletedMultipartUpload{Parts: []types.CompletedPart{{PartNumber: aws.Int32(1), ETag: part.ETag}}},
		IfNoneMatch:     aws.String("*")})
	var re *awshttp.ResponseError
	require.ErrorAs(t, err, &re)
	require.Equal(t, 412, re.HTTPStatusCode(), "%v", err)
	out, err := c.GetObject(ctx, &s3.GetObjectInput{Bucket: &bucket, Key: key})
	require.NoError(t, err)
	got, err := io.ReadAll(out.Body)
	out.Body.Close()
	require.NoError(t, err)
	require.Equal(t, "first", string(got))
}

// OpenS3 takes the endpoint, region and credentials from the AWS variables
// alone, as a user's shell has them after scripts/s3-server start.
func testOpenS3(t *testing.T, srv *s3test.Server) {
	bucket := srv.NewBucket(t)
	home := t.TempDir()
	for _, k := range []string{"AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_SESSION_TOKEN", "AWS_DEFAULT_REGION"} {
		t.Setenv(k, "")
	}
	t.Setenv("HOME", home)
	t.Setenv("AWS_CONFIG_FILE", home+"/none")
	t.Setenv("AWS_SHARED_CREDENTIALS_FILE", home+"/none")
	t.Setenv("AWS_CA_BUNDLE", srv.CAFile)
	for _, kv := range srv.Env() {
		k, v, _ := strings.Cut(kv, "=")
		t.Setenv(k, v)
	}
	b, err := objstore.OpenS3(t.Context(), "s3://"+bucket+"/repo/", objstore.S3Options{PathStyle: true})
	require.NoError(t, err)
	require.NoError(t, b.PutIfAbsent(t.Context(), "format", strings.NewReader("pgporter"), 8))

	// The object is at PREFIX/NAME.
	out, err := srv.Client(t, srv.Endpoint).HeadObject(t.Context(), &s3.HeadObjectInput{Bucket: &bucket, Key: aws.String("repo/format")})
	require.NoError(t, err)
	require.Equal(t, int64(8), aws.ToInt64(out.ContentLength))

	_, err = objstore.OpenS3(t.Context(), "s3://"+bucket+"/repo", objstore.S3Options{PartSize: 1 << 20})
	require.ErrorContains(t, err, "part size")
}
