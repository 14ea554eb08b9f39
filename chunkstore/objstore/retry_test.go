package objstore_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/stretchr/testify/require"

	"github.com/pgporter/pgporter/chunkstore/objstore"
	"github.com/pgporter/pgporter/internal/s3test"
	"github.com/pgporter/pgporter/internal/testsupport"
)

// fast retries, so that the tests take no time waiting.
var fast = objstore.RetryPolicy{MaxAttempts: 5, BaseDelay: time.Millisecond, MaxDelay: 10 * time.Millisecond, MaxTotal: 30 * time.Second}

// Requests of the S3 API, told apart for the fault proxy.
func isPut(r *http.Request) bool {
	return r.Method == http.MethodPut && !r.URL.Query().Has("partNumber")
}
func isPart(n string) func(*http.Request) bool {
	return func(r *http.Request) bool { return r.Method == http.MethodPut && r.URL.Query().Get("partNumber") == n }
}
func isGet(r *http.Request) bool {
	return r.Method == http.MethodGet && !r.URL.Query().Has("list-type")
}
func isList(r *http.Request) bool {
	return r.Method == http.MethodGet && r.URL.Query().Has("list-type")
}
func isHead(r *http.Request) bool   { return r.Method == http.MethodHead }
func isDelete(r *http.Request) bool { return r.Method == http.MethodDelete }
func isNextPage(r *http.Request) bool {
	return isList(r) && r.URL.Query().Get("continuation-token") != ""
}

var slowDown = testsupport.HTTPFault{Status: http.StatusServiceUnavailable, Code: "SlowDown"}

// faulty is an S3 backend reached through a fault proxy, with the proxy,
// the bucket and a client that goes around the proxy.
type faulty struct {
	raw    *objstore.S3
	proxy  *testsupport.HTTPFaultProxy
	bucket string
	direct *s3.Client
}

func newFaulty(t *testing.T, srv *s3test.Server) faulty {
	proxy := testsupport.NewHTTPFaultProxy(t, srv.Endpoint)
	bucket := srv.NewBucket(t)
	raw, err := objstore.NewS3(srv.Client(t, proxy.URL), bucket, "", objstore.S3Options{PartSize: testPartSize, PageSize: testPageSize})
	require.NoError(t, err)
	return faulty{raw: raw, proxy: proxy, bucket: bucket, direct: srv.Client(t, srv.Endpoint)}
}

// requestsOf counts the requests that f makes through the proxy.
func (f faulty) requestsOf(fn func()) int {
	before, _ := f.proxy.Counts()
	fn()
	after, _ := f.proxy.Counts()
	return after - before
}

func random(n int) []byte {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return b
}

func testRetry(t *testing.T, srv *s3test.Server) {
	t.Run("Throttled", func(t *testing.T) {
		f := newFaulty(t, srv)
		b, ctx := objstore.WithRetry(f.raw, fast), t.Context()
		data := random(1000)

		f.proxy.Inject(1, testsupport.HTTPFault{Match: isPut, Status: 503, Code: "SlowDown"})
		err := f.raw.PutIfAbsent(ctx, "x", bytes.NewReader(data), 1000)
		require.True(t, objstore.IsTransient(err), "%v", err)

		f.proxy.Inject(3, testsupport.HTTPFault{Match: isPut, Status: 503, Code: "SlowDown"})
		f.proxy.Inject(3, testsupport.HTTPFault{Match: isGet, Status: 500, Code: "InternalError"})
		f.proxy.Inject(3, testsupport.HTTPFault{Match: isHead, Status: 503, Code: "SlowDown"})
		f.proxy.Inject(3, testsupport.HTTPFault{Match: isDelete, Status: 429, Code: "TooManyRequests"})
		require.NoError(t, b.PutIfAbsent(ctx, "x", bytes.NewReader(data), 1000))
		got, err := b.Get(ctx, "x", nil)
		require.NoError(t, err)
		require.Equal(t, data, got)
		size, err := b.Stat(ctx, "x")
		require.NoError(t, err)
		require.Equal(t, int64(1000), size)
		require.NoError(t, b.Delete(ctx, "x"))
		_, injected := f.proxy.Counts()
		require.Equal(t, 13, injected)
		_, err = b.Stat(ctx, "x")
		require.ErrorIs(t, err, objstore.ErrNotFound)
	})

	t.Run("Bounded", func(t *testing.T) {
		f := newFaulty(t, srv)
		b, ctx := objstore.WithRetry(f.raw, fast), t.Context()
		require.NoError(t, b.PutIfAbsent(ctx, "x", strings.NewReader("x"), 1))
		f.proxy.Inject(1000, testsupport.HTTPFault{Match: isGet, Status: 503, Code: "SlowDown"})
		n := f.requestsOf(func() {
			_, err := b.Get(ctx, "x", nil)
			require.True(t, objstore.IsTransient(err), "%v", err)
			require.ErrorContains(t, err, "giving up after 5 attempts")
		})
		require.Equal(t, fast.MaxAttempts, n)

		// The total cap ends retries before the attempts run out.
		capped := objstore.WithRetry(f.raw, objstore.RetryPolicy{MaxAttempts: 1000, BaseDelay: 20 * time.Millisecond, MaxDelay: 50 * time.Millisecond, MaxTotal: 300 * time.Millisecond})
		start := time.Now()
		_, err := capped.Get(ctx, "x", nil)
		require.True(t, objstore.IsTransient(err), "%v", err)
		require.Less(t, time.Since(start), 2*time.Second)
	})

	t.Run("No4xxRetry", func(t *testing.T) {
		f := newFaulty(t, srv)
		b, ctx := objstore.WithRetry(f.raw, fast), t.Context()
		require.NoError(t, b.PutIfAbsent(ctx, "x", strings.NewReader("x"), 1))
		f.proxy.Inject(10, testsupport.HTTPFault{Match: isGet, Status: 403, Code: "AccessDenied"})
		n := f.requestsOf(func() {
			_, err := b.Get(ctx, "x", nil)
			require.Error(t, err)
			require.False(t, objstore.IsTransient(err), "%v", err)
		})
		require.Equal(t, 1, n, "a 403 was retried")
		f.proxy.Clear()
		n = f.requestsOf(func() {
			_, err := b.Get(ctx, "missing", nil)
			require.ErrorIs(t, err, objstore.ErrNotFound)
		})
		require.Equal(t, 1, n, "a 404 was retried")
		n = f.requestsOf(func() {
			err := b.PutIfAbsent(ctx, "x", strings.NewReader("y"), 1)
			require.ErrorIs(t, err, objstore.ErrExists, "a first attempt's ErrExists stands, whatever the size")
		})
		require.Equal(t, 1, n)
	})

	t.Run("CutDownload", func(t *testing.T) {
		f := newFaulty(t, srv)
		b, ctx := objstore.WithRetry(f.raw, fast), t.Context()
		data := random(2*testPartSize + 1<<20)
		require.NoError(t, b.PutIfAbsent(ctx, "pack", bytes.NewReader(data), int64(len(data))))
		off, n := int64(testPartSize-1<<20), int64(3<<20)

		f.proxy.Inject(1, testsupport.HTTPFault{Match: isGet, CutResponseAfter: 1 << 20})
		_, err := f.raw.GetRange(ctx, "pack", off, n, nil)
		require.True(t, objstore.IsTransient(err), "%v", err)

		f.proxy.Inject(2, testsupport.HTTPFault{Match: isGet, CutResponseAfter: 1 << 20})
		got, err := b.GetRange(ctx, "pack", off, n, []byte("dst"))
		require.NoError(t, err)
		require.Equal(t, "dst", string(got[:3]))
		require.True(t, bytes.Equal(data[off:off+n], got[3:]))
		f.proxy.Inject(2, testsupport.HTTPFault{Match: isGet, CutResponseAfter: 5 << 20})
		got, err = b.Get(ctx, "pack", nil)
		require.NoError(t, err)
		require.True(t, bytes.Equal(data, got))
		_, injected := f.proxy.Counts()
		require.Equal(t, 5, injected)
	})

	// A server that takes a request and never answers, or stops in the
	// middle of a download, fails the request as transient after the
	// stall limit (the SDK has no limit of its own for S3: a backup's
	// flush, and a store's Close, waited for ever), and the retries go on.
	t.Run("Stalled", func(t *testing.T) {
		proxy := testsupport.NewHTTPFaultProxy(t, srv.Endpoint)
		bucket := srv.NewBucket(t)
		const stall = 300 * time.Millisecond
		raw, err := objstore.NewS3(srv.Client(t, proxy.URL), bucket, "", objstore.S3Options{PartSize: testPartSize, PageSize: testPageSize, Stall: stall})
		require.NoError(t, err)
		b, ctx := objstore.WithRetry(raw, fast), t.Context()
		data := random(3 << 20)

		proxy.Inject(1, testsupport.HTTPFault{Match: isPut, Stall: true})
		err = raw.PutIfAbsent(ctx, "pack", bytes.NewReader(data), int64(len(data)))
		require.True(t, objstore.IsTransient(err), "%v", err)
		proxy.Inject(1, testsupport.HTTPFault{Match: isPut, Stall: true})
		require.NoError(t, b.PutIfAbsent(ctx, "pack", bytes.NewReader(data), int64(len(data))))

		for _, fault := range []testsupport.HTTPFault{{Match: isGet, Stall: true}, {Match: isGet, StallResponseAfter: 1 << 20}} {
			proxy.Inject(1, fault)
			_, err = raw.GetRange(ctx, "pack", 1000, 2<<20, nil)
			require.True(t, objstore.IsTransient(err), "%v", err)
			if fault.StallResponseAfter != 0 {
				require.ErrorContains(t, err, "no answer from the server for 300ms")
			}
			proxy.Inject(1, fault)
			got, err := b.Get(ctx, "pack", nil)
			require.NoError(t, err)
			require.True(t, bytes.Equal(data, got))
		}
		_, injected := proxy.Counts()
		require.Equal(t, 6, injected)

		// A listing whose answer stops half way, in the SDK's own
		// reading of it.
		proxy.Inject(1, testsupport.HTTPFault{Match: isList, StallResponseAfter: 100})
		for _, err := range raw.List(ctx, "") {
			require.True(t, objstore.IsTransient(err), "%v", err)
			require.ErrorContains(t, err, "no answer from the server for 300ms")
		}
	})

	// A server that stops reading an upload's body: the client's write
	// blocks once the sockets' buffers are full, which TCP alone bounds
	// never (the server's window stays open at zero). The body is larger
	// than those buffers can take (tcp_rmem's largest is 32 MiB here).
	t.Run("StalledUpload", func(t *testing.T) {
		proxy := testsupport.NewHTTPFaultProxy(t, srv.Endpoint)
		bucket := srv.NewBucket(t)
		// Long enough that 48 MiB moving under -race on a loaded machine
		// never pauses that long; the checks go around the proxy.
		const stall = 2 * time.Second
		raw, err := objstore.NewS3(srv.Client(t, proxy.URL), bucket, "", objstore.S3Options{PartSize: 64 << 20, Stall: stall})
		require.NoError(t, err)
		direct, err := objstore.NewS3(srv.Client(t, srv.Endpoint), bucket, "", objstore.S3Options{PartSize: 64 << 20})
		require.NoError(t, err)
		ctx := t.Context()
		data := random(48 << 20)
		proxy.Inject(1, testsupport.HTTPFault{Match: isPut, StallRequestAfter: 1 << 20})
		err = raw.PutIfAbsent(ctx, "pack", bytes.NewReader(data), int64(len(data)))
		require.True(t, objstore.IsTransient(err), "%v", err)
		require.ErrorContains(t, err, "no answer from the server for 2s")
		_, err = direct.Stat(ctx, "pack")
		require.ErrorIs(t, err, objstore.ErrNotFound, "a stalled upload left an object")

		proxy.Inject(1, testsupport.HTTPFault{Match: isPut, StallRequestAfter: 1 << 20})
		require.NoError(t, objstore.WithRetry(raw, fast).PutIfAbsent(ctx, "pack", bytes.NewReader(data), int64(len(data))))
		got, err := direct.Get(ctx, "pack", nil)
		require.NoError(t, err)
		require.True(t, bytes.Equal(data, got))
		_, injected := proxy.Counts()
		require.Equal(t, 2, injected)
	})

	// A put cut mid-upload leaves no object, or with retries a whole one.
	for _, tc := range []struct {
		name  string
		size  int
		fault testsupport.HTTPFault
	}{
		{"CutPut", 1 << 20, testsupport.HTTPFault{Match: isPut, CutRequestAfter: 300 << 10}},
		{"CutPart", 2*testPartSize + 1<<20, testsupport.HTTPFault{Match: isPart("2"), CutRequestAfter: 1 << 20}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFaulty(t, srv)
			ctx := t.Context()
			data := random(tc.size)
			f.proxy.Inject(1, tc.fault)
			err := f.raw.PutIfAbsent(ctx, "obj", bytes.NewReader(data), int64(tc.size))
			require.True(t, objstore.IsTransient(err), "%v", err)
			_, err = f.raw.Stat(ctx, "obj")
			require.ErrorIs(t, err, objstore.ErrNotFound, "a cut upload left an object")
			for o, err := range f.raw.List(ctx, "") {
				require.NoError(t, err)
				t.Fatalf("a cut upload left %v", o)
			}
			ups, err := f.direct.ListMultipartUploads(ctx, &s3.ListMultipartUploadsInput{Bucket: &f.bucket})
			require.NoError(t, err)
			require.Empty(t, ups.Uploads, "a failed multipart upload was not aborted")

			f.proxy.Inject(2, tc.fault)
			b := objstore.WithRetry(f.raw, fast)
			require.NoError(t, b.PutIfAbsent(ctx, "obj", bytes.NewReader(data), int64(tc.size)))
			got, err := b.Get(ctx, "obj", nil)
			require.NoError(t, err)
			require.True(t, bytes.Equal(data, got), "the object is not whole")
			_, injected := f.proxy.Counts()
			require.Equal(t, 3, injected)
		})
	}

	// The server created the object but its answer was lost: the retry
	// meets 412, finds the object of its size and takes it for its own.
	t.Run("LostAnswer", func(t *testing.T) {
		f := newFaulty(t, srv)
		b, ctx := objstore.WithRetry(f.raw, fast), t.Context()
		for _, size := range []int{1000, 2*testPartSize + 1} {
			name := fmt.Sprintf("obj-%d", size)
			data := random(size)
			match := isPut
			if size > testPartSize {
				match = func(r *http.Request) bool { return r.Method == http.MethodPost && r.URL.Query().Has("uploadId") }
			}
			f.proxy.Inject(1, testsupport.HTTPFault{Match: match, CutResponseAfter: -1})
			require.NoError(t, b.PutIfAbsent(ctx, name, bytes.NewReader(data), int64(size)), "size %d", size)
			got, err := b.Get(ctx, name, nil)
			require.NoError(t, err)
			require.True(t, bytes.Equal(data, got))
		}
		_, injected := f.proxy.Counts()
		require.Equal(t, 2, injected)
	})

	t.Run("ListResumes", func(t *testing.T) {
		f := newFaulty(t, srv)
		b, ctx := objstore.WithRetry(f.raw, fast), t.Context()
		var want []string
		for i := range 10 {
			name := string(rune('a'+i)) + ".run"
			require.NoError(t, b.PutIfAbsent(ctx, name, strings.NewReader("r"), 1))
			want = append(want, name)
		}
		f.proxy.Inject(1, testsupport.HTTPFault{Match: isNextPage, Status: 503, Code: "SlowDown"})
		f.proxy.Inject(1, testsupport.HTTPFault{Match: isNextPage, CutResponseAfter: 10})
		var got []string
		for o, err := range b.List(ctx, "") {
			require.NoError(t, err)
			got = append(got, o.Name)
		}
		require.Equal(t, want, got)
		_, injected := f.proxy.Counts()
		require.Equal(t, 2, injected)
	})

	t.Run("CancelWhileWaiting", func(t *testing.T) {
		f := newFaulty(t, srv)
		b := objstore.WithRetry(f.raw, objstore.RetryPolicy{BaseDelay: time.Hour, MaxDelay: time.Hour, MaxTotal: 2 * time.Hour})
		f.proxy.Inject(1000, testsupport.HTTPFault{Match: isHead, Status: 503, Code: "SlowDown"})
		ctx, cancel := context.WithTimeout(t.Context(), 200*time.Millisecond)
		defer cancel()
		start := time.Now()
		_, err := b.Stat(ctx, "x")
		require.ErrorIs(t, err, context.DeadlineExceeded)
		require.Less(t, time.Since(start), 5*time.Second)
	})
}

// The server is killed and started again while a reader keeps reading:
// every read gets through, the one caught by the restart after retries
// (connection refused), and a put just after the restart, when the server
// stalls writes, too. It restarts the shared server, so it runs last.
func testServerRestart(t *testing.T, srv *s3test.Server) {
	raw := newS3(t, srv, srv.Endpoint, "restart")
	patient := objstore.RetryPolicy{MaxAttempts: 100, BaseDelay: 50 * time.Millisecond, MaxDelay: time.Second, MaxTotal: 2 * time.Minute}
	b, ctx := objstore.WithRetry(raw, patient), t.Context()
	data := random(1 << 20)
	require.NoError(t, b.PutIfAbsent(ctx, "pack", bytes.NewReader(data), int64(len(data))))

	done, started := make(chan struct{}), make(chan struct{})
	type result struct {
		took time.Duration
		err  error
	}
	results := make(chan result, 1)
	go func() {
		defer close(results)
		longest, reads := time.Duration(0), 0
		for {
			select {
			case <-done:
				results <- result{took: longest}
				return
			default:
			}
			start := time.Now()
			got, err := b.GetRange(ctx, "pack", 1000, 4096, nil)
			if err == nil && !bytes.Equal(data[1000:5096], got) {
				err = fmt.Errorf("read wrong bytes")
			}
			if err != nil {
				results <- result{err: err}
				return
			}
			if reads++; reads == 1 {
				close(started)
			}
			longest = max(longest, time.Since(start))
		}
	}()
	select { // reads under way before the kill
	case <-started:
	case r := <-results:
		t.Fatal(r.err)
	}
	srv.Restart(t)
	close(done)
	r := <-results
	require.NoError(t, r.err)
	t.Logf("the longest read took %v", r.took)
	require.Greater(t, r.took, 200*time.Millisecond, "no read spanned the restart")

	more := random(1 << 20)
	require.NoError(t, b.PutIfAbsent(ctx, "after", bytes.NewReader(more), int64(len(more))))
	got, err := b.Get(ctx, "after", nil)
	require.NoError(t, err)
	require.True(t, bytes.Equal(more, got))
}
