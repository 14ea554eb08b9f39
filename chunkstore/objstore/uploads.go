package objstore

import (
	"context"
	"errors"
	"iter"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/smithy-go"
)

// Upload is a multipart upload that was started and neither completed nor
// aborted: a writer killed mid-upload leaves one, whose parts the bucket
// keeps (and bills) unseen by any listing of objects until it is aborted.
type Upload struct {
	Name string // the object it would create
	ID   string
	// Initiated is when the upload started, by the server's clock; zero
	// when the server did not say.
	Initiated time.Time
}

// StaleUploads yields the incomplete multipart uploads of objects whose
// names start with prefix that were initiated before cutoff, a page at a
// time, in order of name. Uploads whose start the server does not report
// are of unknown age and never yielded: one may be a live writer's. Keys
// under the backend's prefix that are not valid names (not written through
// a Backend) are skipped, as by List. An error ends the sequence.
//
// A live upload of a pack takes seconds, so a cutoff a day back (the
// caller's choice) leaves every live writer alone.
func (s *S3) StaleUploads(ctx context.Context, prefix string, cutoff time.Time) iter.Seq2[Upload, error] {
	return func(yield func(Upload, error) bool) {
		pages := s3.NewListMultipartUploadsPaginator(s.client, &s3.ListMultipartUploadsInput{
			Bucket: &s.bucket, Prefix: aws.String(s.prefix + prefix), MaxUploads: aws.Int32(s.pageSize),
		})
		for pages.HasMorePages() {
			page, err := pages.NextPage(ctx)
			if err != nil {
				yield(Upload{}, classify(err, "listing the uploads of", prefix))
				return
			}
			for _, u := range page.Uploads {
				name, ok := strings.CutPrefix(aws.ToString(u.Key), s.prefix)
				if !ok || ValidName(name) != nil || u.Initiated == nil || !u.Initiated.Before(cutoff) {
					continue
				}
				if !yield(Upload{Name: name, ID: aws.ToString(u.UploadId), Initiated: *u.Initiated}, nil) {
					return
				}
			}
		}
	}
}

// AbortUpload aborts u, deleting the parts it holds. An upload already
// gone (aborted, or completed meanwhile) is no error.
func (s *S3) AbortUpload(ctx context.Context, u Upload) error {
	if err := ValidName(u.Name); err != nil {
		return err
	}
	_, err := s.client.AbortMultipartUpload(ctx, &s3.AbortMultipartUploadInput{
		Bucket: &s.bucket, Key: s.key(u.Name), UploadId: aws.String(u.ID),
	})
	if err == nil {
		return nil
	}
	if ae, ok := errors.AsType[smithy.APIError](err); ok && ae.ErrorCode() == "NoSuchUpload" {
		return nil
	}
	if err = classify(err, "aborting the upload of", u.Name); errors.Is(err, ErrNotFound) {
		return nil
	}
	return err
}
