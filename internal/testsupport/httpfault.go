package testsupport

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"sync"
	"testing"
)

// HTTPFault is what an HTTPFaultProxy does to one request instead of
// forwarding it untouched.
type HTTPFault struct {
	// Match picks the requests the fault applies to; nil matches all.
	Match func(*http.Request) bool
	// Status, when not 0, answers without forwarding, with an S3 error
	// document of Code (503 and "SlowDown" for throttling, say).
	Status int
	Code   string
	// CutRequestAfter, when not 0, forwards that many bytes of the
	// request's body to the server and then breaks both connections, the
	// server's and the client's, as a network failure mid-upload would.
	CutRequestAfter int64
	// CutResponseAfter, when not 0, forwards the server's answer (headers
	// included) but only that many bytes of its body, then breaks the
	// client's connection. A negative value breaks it before the headers:
	// the request was done, the answer is lost.
	CutResponseAfter int64
	// Stall takes the request (its body read whole) and never answers,
	// until the client gives up.
	Stall bool
	// StallRequestAfter, when not 0, reads that many bytes of the
	// request's body and then stops reading it, answering nothing, until
	// the client gives up: a server that stops taking an upload.
	StallRequestAfter int64
	// StallResponseAfter, when not 0, forwards the server's answer but
	// only that many bytes of its body, then sends nothing more until the
	// client gives up.
	StallResponseAfter int64
}

// HTTPFaultProxy is a reverse proxy in front of a real HTTP server (the S3
// test server), on loopback, that injects HTTPFaults into chosen requests.
// The client keeps signing for the proxy's address, and the Host header is
// passed on unchanged, so that S3 signatures still verify.
type HTTPFaultProxy struct {
	URL string // http://127.0.0.1:PORT

	srv    *httptest.Server
	rp     *httputil.ReverseProxy
	closed chan struct{} // closed at cleanup, ending stalled requests

	mu       sync.Mutex // guards pending, requests, injected
	pending  []pendingFault
	requests int // requests seen
	injected int // faults applied
}

type pendingFault struct {
	HTTPFault
	left int
}

// NewHTTPFaultProxy starts a proxy to upstream (http://HOST:PORT) that
// closes at t's cleanup.
func NewHTTPFaultProxy(t testing.TB, upstream string) *HTTPFaultProxy {
	t.Helper()
	u, err := url.Parse(upstream)
	if err != nil {
		t.Fatal(err)
	}
	p := &HTTPFaultProxy{rp: httputil.NewSingleHostReverseProxy(u), closed: make(chan struct{})}
	// Each write goes out at once, so that a cut answer has really sent
	// its first bytes.
	p.rp.FlushInterval = -1
	p.rp.ErrorLog = log.New(io.Discard, "", 0) // cuts are the point
	p.rp.ErrorHandler = func(w http.ResponseWriter, r *http.Request, err error) {
		if f, ok := r.Context().Value(faultKey{}).(*HTTPFault); ok && (f.CutRequestAfter != 0 || f.CutResponseAfter != 0) {
			panic(http.ErrAbortHandler) // the server closes the connection
		}
		http.Error(w, err.Error(), http.StatusBadGateway)
	}
	p.rp.ModifyResponse = func(resp *http.Response) error {
		f, ok := resp.Request.Context().Value(faultKey{}).(*HTTPFault)
		if ok && f.StallResponseAfter != 0 {
			resp.Body = &cutBody{ReadCloser: resp.Body, left: f.StallResponseAfter, stall: resp.Request.Context().Done()}
			return nil
		}
		if !ok || f.CutResponseAfter == 0 {
			return nil
		}
		if f.CutResponseAfter < 0 {
			_ = resp.Body.Close()
			return errCut
		}
		resp.Body = &cutBody{ReadCloser: resp.Body, left: f.CutResponseAfter}
		return nil
	}
	p.srv = httptest.NewServer(http.HandlerFunc(p.serve))
	p.URL = p.srv.URL
	t.Cleanup(p.srv.Close)
	t.Cleanup(func() { close(p.closed) }) // before Close, which waits for the handlers
	return p
}

type faultKey struct{}

var errCut = errors.New("testsupport: connection cut by the fault proxy")

// Inject applies f to the next n requests that it matches.
func (p *HTTPFaultProxy) Inject(n int, f HTTPFault) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.pending = append(p.pending, pendingFault{HTTPFault: f, left: n})
}

// Clear drops the faults not yet applied.
func (p *HTTPFaultProxy) Clear() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.pending = nil
}

// Counts returns the number of requests seen and of faults applied so far.
func (p *HTTPFaultProxy) Counts() (requests, injected int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.requests, p.injected
}

func (p *HTTPFaultProxy) take(r *http.Request) *HTTPFault {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.requests++
	for i := range p.pending {
		pf := &p.pending[i]
		if pf.left > 0 && (pf.Match == nil || pf.Match(r)) {
			pf.left--
			p.injected++
			f := pf.HTTPFault
			return &f
		}
	}
	return nil
}

func (p *HTTPFaultProxy) serve(w http.ResponseWriter, r *http.Request) {
	f := p.take(r)
	if f == nil {
		p.rp.ServeHTTP(w, r)
		return
	}
	if f.Status != 0 {
		_, _ = io.Copy(io.Discard, r.Body)
		w.Header().Set("Content-Type", "application/xml")
		w.WriteHeader(f.Status)
		if r.Method != http.MethodHead {
			fmt.Fprintf(w, `<?xml version="1.0" encoding="UTF-8"?>`+"\n"+
				`<Error><Code>%s</Code><Message>injected by the fault proxy</Message><Resource>%s</Resource></Error>`,
				f.Code, r.URL.Path)
		}
		return
	}
	if f.Stall {
		_, _ = io.Copy(io.Discard, r.Body)
		<-r.Context().Done() // the client closed the connection
		return
	}
	if f.StallRequestAfter != 0 {
		// The server learns that the client closed the connection only
		// once it has read the body whole, so the handler also ends when
		// the proxy closes.
		_, _ = io.CopyN(io.Discard, r.Body, f.StallRequestAfter)
		select {
		case <-r.Context().Done():
		case <-p.closed:
		}
		return
	}
	if f.CutRequestAfter != 0 {
		r.Body = &cutBody{ReadCloser: r.Body, left: f.CutRequestAfter}
	}
	p.rp.ServeHTTP(w, r.WithContext(contextWithFault(r, f)))
}

// cutBody passes left bytes on, then fails; with stall, once stall is
// closed.
type cutBody struct {
	io.ReadCloser
	left  int64
	stall <-chan struct{}
}

func (c *cutBody) Read(b []byte) (int, error) {
	if c.left <= 0 {
		if c.stall != nil {
			<-c.stall
		}
		return 0, errCut
	}
	if int64(len(b)) > c.left {
		b = b[:c.left]
	}
	n, err := c.ReadCloser.Read(b)
	c.left -= int64(n)
	return n, err
}

func contextWithFault(r *http.Request, f *HTTPFault) context.Context {
	return context.WithValue(r.Context(), faultKey{}, f)
}
