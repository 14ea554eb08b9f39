package objstore

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"iter"
	"net"
	"net/http"
	"slices"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	awshttp "github.com/aws/aws-sdk-go-v2/aws/transport/http"
	"github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/aws-sdk-go-v2/service/s3/types"
	"github.com/aws/smithy-go"
	smithyhttp "github.com/aws/smithy-go/transport/http"
)

// Part sizes of a multipart upload. S3 wants at least 5 MiB for every part
// but the last, and at most 10000 parts.
const (
	MinPartSize     = 5 << 20
	MaxPartSize     = 1 << 30
	DefaultPartSize = 16 << 20
	maxParts        = 10000
)

// S3Options configures an S3 backend. The zero value works.
type S3Options struct {
	// PathStyle addresses buckets as ENDPOINT/BUCKET rather than
	// BUCKET.ENDPOINT, as most servers other than AWS want. Only OpenS3
	// reads it; NewS3 takes the client's own setting.
	PathStyle bool
	// PartSize is the largest object sent in one PUT, and the size of each
	// part of a larger one (the memory an upload holds). Default
	// DefaultPartSize; MinPartSize to MaxPartSize.
	PartSize int64
	// PageSize is the number of keys asked for per listing request
	// (default and most 1000).
	PageSize int32
	// Stall is how long a request may go without progress: the server
	// taking the next bytes of an upload, answering once the request is
	// sent, or sending the next bytes of its answer. The request then
	// fails as transient, and the retries of WithRetry apply; neither
	// net/http nor the SDK has such a limit for S3, so a server that took
	// a request and never answered, or stopped reading an upload, held a
	// backup, or a Close, for ever. Default DefaultStall.
	Stall time.Duration
}

// DefaultStall is S3Options.Stall's default: well above what a server
// takes to store or find a part, below what a user waits for.
const DefaultStall = time.Minute

func (o S3Options) withDefaults() S3Options {
	if o.Stall <= 0 {
		o.Stall = DefaultStall
	}
	if o.PartSize == 0 {
		o.PartSize = DefaultPartSize
	}
	if o.PageSize == 0 {
		o.PageSize = 1000
	}
	return o
}

// Validate reports options out of range.
func (o S3Options) Validate() error {
	o = o.withDefaults()
	if o.PartSize < MinPartSize || o.PartSize > MaxPartSize {
		return fmt.Errorf("objstore: part size %d outside %d..%d", o.PartSize, MinPartSize, MaxPartSize)
	}
	if o.PageSize < 1 || o.PageSize > 1000 {
		return fmt.Errorf("objstore: page size %d outside 1..1000", o.PageSize)
	}
	return nil
}

// S3 is a Backend on a bucket of an S3 server, under a key prefix: object
// NAME is key PREFIX/NAME.
//
// PutIfAbsent sends one PUT for an object of up to PartSize bytes and a
// multipart upload for a larger one; either becomes visible whole when it
// completes, never in part. Both carry If-None-Match: * (on the PUT, and on
// CompleteMultipartUpload), so a server that implements conditional writes
// (AWS since 2024, SeaweedFS) refuses to replace an object even when two
// writers race; 412 becomes ErrExists. Before a multipart upload it also
// asks whether the name is taken, to spare the upload. Against a server
// that ignores If-None-Match, "if absent" is that check only, and a race
// can replace an object; see docs/design/0011-object-storage.md.
//
// The S3 backend makes one attempt per request (the SDK's retries are
// turned off): WithRetry retries, with its own bounds. A multipart upload
// that fails is aborted; if the abort fails too, its parts stay invisible
// until a prune or a bucket lifecycle rule removes them.
type S3 struct {
	client   *s3.Client
	bucket   string
	prefix   string // "" or ending in "/"
	partSize int64
	pageSize int32
}

var _ Backend = (*S3)(nil)

// OpenS3 opens the repository at s3://BUCKET/PREFIX with the AWS SDK's
// default configuration: AWS_ENDPOINT_URL, AWS_REGION, AWS_ACCESS_KEY_ID,
// AWS_SECRET_ACCESS_KEY, AWS_CA_BUNDLE, AWS_PROFILE and the shared config
// and credentials files, as the aws CLI reads them.
func OpenS3(ctx context.Context, rawURL string, opts S3Options) (*S3, error) {
	bucket, prefix, err := ParseURL(rawURL)
	if err != nil {
		return nil, err
	}
	if err := opts.Validate(); err != nil {
		return nil, err
	}
	cfg, err := config.LoadDefaultConfig(ctx)
	if err != nil {
		return nil, fmt.Errorf("loading the AWS configuration: %w", err)
	}
	if cfg.Region == "" {
		// The SDK's own words for it are "Invalid region: region was not
		// a valid DNS name" or "endpoint rule error", at the first request.
		return nil, errors.New("no AWS region: set AWS_REGION (any name, as us-east-1, for a server other than AWS) or a profile's region")
	}
	client := s3.NewFromConfig(cfg, func(o *s3.Options) { o.UsePathStyle = opts.PathStyle })
	return NewS3(client, bucket, prefix, opts)
}

// NewS3 returns a backend on bucket under prefix through a copy of client,
// whose own retries it turns off.
func NewS3(client *s3.Client, bucket, prefix string, opts S3Options) (*S3, error) {
	if err := opts.Validate(); err != nil {
		return nil, err
	}
	if err := validBucket(bucket); err != nil {
		return nil, fmt.Errorf("objstore: %w", err)
	}
	prefix = strings.Trim(prefix, "/")
	if prefix != "" {
		if err := ValidName(prefix); err != nil {
			return nil, fmt.Errorf("objstore: prefix: %w", err)
		}
		prefix += "/"
	}
	opts = opts.withDefaults()
	c := s3.New(client.Options(), func(o *s3.Options) {
		o.Retryer = aws.NopRetryer{}
		// Every silence of a request is bounded: the default client's
		// only limits are on connecting.
		o.HTTPClient = stallClient{next: o.HTTPClient, d: opts.Stall}
		// A ranged GET has no checksum of the whole object; the callers
		// hash what they read.
		o.DisableLogOutputChecksumValidationSkipped = true
	})
	return &S3{client: c, bucket: bucket, prefix: prefix, partSize: opts.PartSize, pageSize: opts.PageSize}, nil
}

func (s *S3) key(name string) *string { return aws.String(s.prefix + name) }

// PutIfAbsent implements Backend.
func (s *S3) PutIfAbsent(ctx context.Context, name string, r io.Reader, size int64) error {
	if err := ValidName(name); err != nil {
		return err
	}
	if size < 0 || size > s.partSize*maxParts {
		return fmt.Errorf("objstore: %s: size %d outside 0..%d", name, size, s.partSize*maxParts)
	}
	if size <= s.partSize {
		buf := make([]byte, size)
		if _, err := io.ReadFull(ctxReader{ctx, r}, buf); err != nil {
			return fmt.Errorf("reading %s: %w", name, err)
		}
		_, err := s.client.PutObject(ctx, &s3.PutObjectInput{
			Bucket: &s.bucket, Key: s.key(name), Body: bytes.NewReader(buf),
			ContentLength: aws.Int64(size), IfNoneMatch: aws.String("*"),
		})
		return classify(err, "putting", name)
	}
	switch _, err := s.Stat(ctx, name); {
	case err == nil:
		return fmt.Errorf("%w: %s", ErrExists, name)
	case !errors.Is(err, ErrNotFound):
		return err
	}
	return s.putMultipart(ctx, name, r, size)
}

func (s *S3) putMultipart(ctx context.Context, name string, r io.Reader, size int64) (err error) {
	up, err := s.client.CreateMultipartUpload(ctx, &s3.CreateMultipartUploadInput{Bucket: &s.bucket, Key: s.key(name)})
	if err != nil {
		return classify(err, "starting the upload of", name)
	}
	defer func() {
		if err == nil {
			return
		}
		// Abort even when ctx is done, briefly: the parts would otherwise
		// take space, unseen, until a prune.
		actx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
		defer cancel()
		_, _ = s.client.AbortMultipartUpload(actx, &s3.AbortMultipartUploadInput{Bucket: &s.bucket, Key: s.key(name), UploadId: up.UploadId})
	}()
	buf := make([]byte, s.partSize)
	var parts []types.CompletedPart
	for n, off := int32(1), int64(0); off < size; n, off = n+1, off+s.partSize {
		p := buf[:min(s.partSize, size-off)]
		if _, err := io.ReadFull(ctxReader{ctx, r}, p); err != nil {
			return fmt.Errorf("reading %s: %w", name, err)
		}
		out, err := s.client.UploadPart(ctx, &s3.UploadPartInput{
			Bucket: &s.bucket, Key: s.key(name), UploadId: up.UploadId,
			PartNumber: aws.Int32(n), Body: bytes.NewReader(p), ContentLength: aws.Int64(int64(len(p))),
		})
		if err != nil {
			return classify(err, fmt.Sprintf("uploading part %d of", n), name)
		}
		parts = append(parts, types.CompletedPart{PartNumber: aws.Int32(n), ETag: out.ETag})
	}
	_, err = s.client.CompleteMultipartUpload(ctx, &s3.CompleteMultipartUploadInput{
		Bucket: &s.bucket, Key: s.key(name), UploadId: up.UploadId,
		MultipartUpload: &types.CompletedMultipartUpload{Parts: parts},
		IfNoneMatch:     aws.String("*"),
	})
	return classify(err, "completing the upload of", name)
}

// GetRange implements Backend.
func (s *S3) GetRange(ctx context.Context, name string, off, n int64, dst []byte) ([]byte, error) {
	if err := ValidName(name); err != nil {
		return dst, err
	}
	if off < 0 || n < 0 {
		return dst, fmt.Errorf("%w: %s: %d+%d", ErrRange, name, off, n)
	}
	if err := checkRead(name, n); err != nil {
		return dst, err
	}
	if n == 0 { // HTTP cannot ask for no bytes
		size, err := s.Stat(ctx, name)
		if err == nil && off > size {
			err = fmt.Errorf("%w: %s: %d+0 of %d bytes", ErrRange, name, off, size)
		}
		return dst, err
	}
	out, err := s.client.GetObject(ctx, &s3.GetObjectInput{
		Bucket: &s.bucket, Key: s.key(name), Range: aws.String(fmt.Sprintf("bytes=%d-%d", off, off+n-1)),
	})
	if err != nil {
		return dst, classify(err, "reading", name)
	}
	defer out.Body.Close()
	// A server that ignored the range would send the whole object; one
	// asked past the end sends what there is.
	want := fmt.Sprintf("bytes %d-%d/", off, off+n-1)
	if cr := aws.ToString(out.ContentRange); !strings.HasPrefix(cr, want) {
		if strings.HasPrefix(cr, fmt.Sprintf("bytes %d-", off)) {
			return dst, fmt.Errorf("%w: %s: %d+%d, server sent %s", ErrRange, name, off, n, cr)
		}
		return dst, fmt.Errorf("objstore: reading %s: asked for %s, server sent %q", name, want, cr)
	}
	return readBody(out.Body, n, dst, name)
}

// readBody appends exactly n bytes of body to dst; a body cut short is
// transient (the connection broke).
func readBody(body io.Reader, n int64, dst []byte, name string) ([]byte, error) {
	if err := checkRead(name, n); err != nil {
		return dst, err
	}
	l := len(dst)
	dst = slices.Grow(dst, int(n))[:l+int(n)]
	if _, err := io.ReadFull(body, dst[l:]); err != nil {
		if errors.Is(err, io.EOF) {
			err = io.ErrUnexpectedEOF
		}
		return dst[:l], classify(err, "reading", name)
	}
	return dst, nil
}

// stallClient bounds every request's silences, which neither net/http nor
// the SDK bounds for S3: a request whose body the server stops reading, an
// answer that does not come, and an answer's body that stops, each for
// longer than d, end the request with a stallError. Progress is any read
// of the request's body by the transport or of the answer's body by the
// caller.
type stallClient struct {
	next s3.HTTPClient
	d    time.Duration
}

func (c stallClient) Do(req *http.Request) (*http.Response, error) {
	ctx, g := newStallGuard(req.Context(), c.d)
	req = req.WithContext(ctx)
	if req.Body != nil && req.Body != http.NoBody {
		req.Body = progressBody{req.Body, g}
	}
	if getBody := req.GetBody; getBody != nil {
		req.GetBody = func() (io.ReadCloser, error) {
			b, err := getBody()
			if err != nil || b == nil || b == http.NoBody {
				return b, err
			}
			return progressBody{b, g}, nil
		}
	}
	resp, err := c.next.Do(req)
	if err != nil {
		g.stop()
		return resp, g.check(err)
	}
	resp.Body = &guardedBody{progressBody{resp.Body, g}}
	return resp, nil
}

// stallError is a request ended by stallClient.
type stallError struct{ d time.Duration }

func (e *stallError) Error() string { return fmt.Sprintf("no answer from the server for %s", e.d) }

// stallGuard ends a request that makes no progress for d.
type stallGuard struct {
	d       time.Duration
	t       *time.Timer
	cancel  context.CancelFunc
	stalled atomic.Bool
}

// newStallGuard returns ctx for a request, ended when it stalls for d.
func newStallGuard(ctx context.Context, d time.Duration) (context.Context, *stallGuard) {
	ctx, cancel := context.WithCancel(ctx)
	g := &stallGuard{d: d, cancel: cancel}
	g.t = time.AfterFunc(d, func() {
		g.stalled.Store(true)
		cancel()
	})
	return ctx, g
}

// stop releases g once its request is done.
func (g *stallGuard) stop() {
	g.t.Stop()
	g.cancel()
}

// check returns err, or a stallError if g ended the request.
func (g *stallGuard) check(err error) error {
	if err != nil && g.stalled.Load() {
		return &stallError{g.d}
	}
	return err
}

// progressBody tells g of each read that brought bytes.
type progressBody struct {
	io.ReadCloser
	g *stallGuard
}

func (p progressBody) Read(b []byte) (int, error) {
	n, err := p.ReadCloser.Read(b)
	if n > 0 {
		p.g.t.Reset(p.g.d)
	}
	if err != io.EOF {
		err = p.g.check(err)
	}
	return n, err
}

// guardedBody is an answer's body, whose Close ends its guard.
type guardedBody struct{ progressBody }

func (b *guardedBody) Close() error {
	b.g.stop()
	return b.ReadCloser.Close()
}

// Get implements Backend.
func (s *S3) Get(ctx context.Context, name string, dst []byte) ([]byte, error) {
	if err := ValidName(name); err != nil {
		return dst, err
	}
	out, err := s.client.GetObject(ctx, &s3.GetObjectInput{Bucket: &s.bucket, Key: s.key(name)})
	if err != nil {
		return dst, classify(err, "reading", name)
	}
	defer out.Body.Close()
	n := aws.ToInt64(out.ContentLength)
	if out.ContentLength == nil || n < 0 {
		return dst, fmt.Errorf("objstore: reading %s: no content length", name)
	}
	return readBody(out.Body, n, dst, name)
}

// Stat implements Backend.
func (s *S3) Stat(ctx context.Context, name string) (int64, error) {
	if err := ValidName(name); err != nil {
		return 0, err
	}
	out, err := s.client.HeadObject(ctx, &s3.HeadObjectInput{Bucket: &s.bucket, Key: s.key(name)})
	if err != nil {
		return 0, classify(err, "looking up", name)
	}
	return aws.ToInt64(out.ContentLength), nil
}

// List implements Backend. Keys under the prefix that are not valid names
// (not written through a Backend) are skipped.
func (s *S3) List(ctx context.Context, prefix string) iter.Seq2[Object, error] {
	return func(yield func(Object, error) bool) {
		pages := s3.NewListObjectsV2Paginator(s.client, &s3.ListObjectsV2Input{
			Bucket: &s.bucket, Prefix: aws.String(s.prefix + prefix), MaxKeys: aws.Int32(s.pageSize),
		})
		for pages.HasMorePages() {
			page, err := pages.NextPage(ctx)
			if err != nil {
				yield(Object{}, classify(err, "listing", prefix))
				return
			}
			for _, o := range page.Contents {
				name, ok := strings.CutPrefix(aws.ToString(o.Key), s.prefix)
				if !ok || ValidName(name) != nil {
					continue
				}
				if !yield(Object{Name: name, Size: aws.ToInt64(o.Size), ModTime: aws.ToTime(o.LastModified)}, nil) {
					return
				}
			}
		}
	}
}

// Delete implements Backend.
func (s *S3) Delete(ctx context.Context, name string) error {
	if err := ValidName(name); err != nil {
		return err
	}
	_, err := s.client.DeleteObject(ctx, &s3.DeleteObjectInput{Bucket: &s.bucket, Key: s.key(name)})
	if err = classify(err, "deleting", name); errors.Is(err, ErrNotFound) {
		return nil
	}
	return err
}

// throttling are the error codes of S3 and its kin that ask the client to
// slow down; they are retried although some come with a 4xx status.
var throttling = map[string]bool{
	"SlowDown": true, "Throttling": true, "ThrottlingException": true, "ThrottledException": true,
	"RequestThrottled": true, "TooManyRequests": true, "RequestLimitExceeded": true,
	"RequestThrottledException": true, "ProvisionedThroughputExceededException": true,
}

// classify maps an SDK error to this package's: 404 to ErrNotFound (but a
// missing bucket, which is a configuration error), 412 to ErrExists, 416 to
// ErrRange; 5xx, throttling and broken connections to a TransientError.
// ctx's own error is passed on as it is.
func classify(err error, action, name string) error {
	if err == nil {
		return nil
	}
	if se, ok := errors.AsType[*stallError](err); ok {
		return &TransientError{fmt.Errorf("%s %s: %w", action, name, se)}
	}
	_, sendErr := errors.AsType[*smithyhttp.RequestSendError](err)
	// A deadline is the caller's, except in a request that failed in the
	// transport: there it is as likely the wait for an answer that
	// S3Options.Stall bounds (net/http's timeouts match DeadlineExceeded),
	// and WithRetry retries nothing once the caller's context has ended.
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) && !sendErr {
		return err
	}
	// No credentials anywhere in the SDK's chain: its words ("get
	// identity: get credentials: failed to refresh cached credentials, no
	// EC2 IMDS role found, ...") do not say so plainly, nor is there a
	// type to match. Denied (whose message names what to set), and not
	// retried: nothing will change.
	if strings.Contains(err.Error(), "get identity: get credentials:") {
		return fmt.Errorf("%w: %s %s: no AWS credentials were found: %w", ErrDenied, action, name, err)
	}
	transient := func() error { return &TransientError{fmt.Errorf("%s %s: %w", action, name, err)} }
	// The connection broke: the request was not sent, or its answer not
	// read whole (the SDK reports either as a response of status 0 or of
	// the status it had read).
	if sendErr || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, syscall.ECONNRESET) ||
		errors.Is(err, syscall.EPIPE) || errors.Is(err, syscall.ECONNREFUSED) {
		return transient()
	}
	if ne, ok := errors.AsType[net.Error](err); ok && ne.Timeout() {
		return transient()
	}
	var code string
	if ae, ok := errors.AsType[smithy.APIError](err); ok {
		code = ae.ErrorCode()
	}
	if re, ok := errors.AsType[*awshttp.ResponseError](err); ok && re.HTTPStatusCode() != 0 {
		switch status := re.HTTPStatusCode(); {
		case status == 404 && code != "NoSuchBucket" && code != "NoSuchUpload":
			return fmt.Errorf("%w: %s", ErrNotFound, name)
		case status == 412:
			return fmt.Errorf("%w: %s", ErrExists, name)
		case status == 416:
			return fmt.Errorf("%w: %s", ErrRange, name)
		case status >= 500 || status == 429:
			return transient()
		case status == 401 || status == 403:
			return fmt.Errorf("%w: %s %s: %w", ErrDenied, action, name, err)
		}
	}
	if throttling[code] {
		return transient()
	}
	return fmt.Errorf("%s %s: %w", action, name, err)
}
