package mover

import (
	"context"
	"encoding/binary"
	"errors"
	"testing"
	"time"

	"github.com/quic-go/quic-go"
	"github.com/stretchr/testify/require"

	"github.com/pgporter/pgporter/protocol"
)

// reasonJobs fails every job with an error that names its kind.
type reasonJobs struct{}

func (reasonJobs) RunJob(_ context.Context, _ *protocol.RunJob, emit func(*protocol.JobEvent)) error {
	emit(&protocol.JobEvent{Kind: protocol.EventProgress, Version: protocol.JobVersion})
	return reasonedErr{}
}

type reasonedErr struct{}

func (reasonedErr) Error() string     { return "publication is not dead" }
func (reasonedErr) JobReason() string { return "not-dead" }

var listJob = &protocol.RunJob{Kind: protocol.JobListPublications, Version: protocol.JobVersion}

// A job's failure reaches the orchestrator with its kind as a value
// (JobError.Reason), not only its text.
func TestJobErrorReason(t *testing.T) {
	r := startReceiver(t, ServerOptions{Jobs: reasonJobs{}})
	s := newTestSender(t, r, PermOrchestrate)
	events := 0
	err := s.RunJob(context.Background(), r.addr, r.id.ID, listJob, func(ev *protocol.JobEvent) {
		require.Equal(t, protocol.EventProgress, ev.Kind)
		events++
	})
	je, ok := errors.AsType[*JobError](err)
	require.True(t, ok, "%v", err)
	require.Equal(t, "not-dead", je.Reason)
	require.Equal(t, "publication is not dead", je.Message)
	require.Equal(t, 1, events)
}

// A job message is a peer's: one of a kind this mover does not know, or of
// a job version it does not speak (a newer orchestrator's), is refused
// with an Error saying so before any job runs, and so is a job from a
// peer below protocol.JobsVersion.
func TestJobHostileMessages(t *testing.T) {
	r := startReceiver(t, ServerOptions{Jobs: reasonJobs{}})
	dial := func(t *testing.T) *rawSender {
		m := newTLSTestMover(t)
		require.NoError(t, r.trust.Trust(TrustedPeer{ID: m.id.ID, Name: "orchestrator", Perms: PermOrchestrate, Added: time.Now()}))
		conn, cs, err := dialMover(context.Background(), r.addr, m.id, r.id.ID, 0)
		require.NoError(t, err)
		t.Cleanup(func() { conn.CloseWithError(0, "") })
		return &rawSender{conn: conn, cs: cs}
	}
	// jobFrame is a RunJob frame with body as it is, unchecked.
	jobFrame := func(body string) []byte {
		payload := binary.AppendUvarint(nil, uint64(len(body)))
		payload = append(payload, body...)
		hdr := binary.BigEndian.AppendUint32(nil, uint32(len(payload)))
		return append(append(hdr, byte(protocol.TypeRunJob)), payload...)
	}
	for _, tc := range []struct {
		name, body string
		is         error
		says       string
	}{
		{"unknown kind", `{"kind":"format-disk","v":2}`, protocol.ErrProtocol, `unknown job kind "format-disk"`},
		{"future version", `{"kind":"export","v":3,"session":"x-20261206-120000-abcdef","shiny":true}`, protocol.ErrVersion, "job of version 3; this build speaks job version 2"},
		{"no version", `{"session":"x-20261206-120000-abcdef","plan":{}}`, protocol.ErrVersion, "job of version 0"},
		{"unknown field", `{"kind":"list-publications","v":2,"shiny":true}`, protocol.ErrProtocol, `unknown field "shiny"`},
		{"not canonical", `{"v":2,"kind":"list-publications"}`, protocol.ErrProtocol, "not in the encoding"},
		{"publish without options", `{"kind":"publish","v":2}`, protocol.ErrProtocol, `job kind "publish" needs publish options`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := dial(t)
			_, err := s.cs.rw.Write(jobFrame(tc.body))
			require.NoError(t, err)
			err = s.nextError(t)
			require.ErrorIs(t, err, tc.is)
			require.ErrorContains(t, err, tc.says)
		})
	}

	t.Run("oversized", func(t *testing.T) {
		s := dial(t)
		body := `{"kind":"list-publications","v":2` + string(make([]byte, protocol.MaxJobBody)) + `}`
		_, err := s.cs.rw.Write(jobFrame(body))
		require.NoError(t, err)
		require.ErrorIs(t, s.nextError(t), protocol.ErrProtocol)
	})

	t.Run("older orchestrator", func(t *testing.T) {
		// A client of protocol 6, as a build from before typed jobs.
		m := newTLSTestMover(t)
		require.NoError(t, r.trust.Trust(TrustedPeer{ID: m.id.ID, Name: "old", Perms: PermOrchestrate, Added: time.Now()}))
		conn, cs, err := dialMoverVersion(context.Background(), r.addr, m.id, r.id.ID, protocol.JobsVersion-1)
		require.NoError(t, err)
		t.Cleanup(func() { conn.CloseWithError(0, "") })
		require.NoError(t, cs.write(listJob))
		_, err = cs.next()
		require.ErrorIs(t, err, protocol.ErrVersion)
		require.ErrorContains(t, err, "jobs need protocol version 7")
	})
}

// An orchestrator refuses to hand a job to a mover older than
// protocol.JobsVersion, with a version error naming it.
func TestJobOlderMover(t *testing.T) {
	r := startReceiver(t, ServerOptions{Jobs: reasonJobs{}})
	s := newTestSender(t, r, PermOrchestrate)
	testServerVersion.Store(uint32(protocol.JobsVersion - 1))
	t.Cleanup(func() { testServerVersion.Store(0) })
	err := s.RunJob(context.Background(), r.addr, r.id.ID, listJob, func(*protocol.JobEvent) { t.Error("an event from an older mover") })
	require.ErrorIs(t, err, protocol.ErrVersion)
	require.ErrorContains(t, err, "speaks protocol 6, and jobs need 7: upgrade it")
}

// dialMoverVersion connects as a client that speaks protocol versions up
// to v, as an older build would.
func dialMoverVersion(ctx context.Context, addr string, id *Identity, peer PeerID, v uint16) (*quic.Conn, *controlStream, error) {
	conn, _, err := dialQUIC(ctx, addr, ClientTLSConfig(id, peer), QUICConfig(), 0)
	if err != nil {
		return nil, nil, err
	}
	st, err := conn.OpenStreamSync(ctx)
	if err != nil {
		return nil, nil, err
	}
	cs := newControlStream(st)
	if _, err := st.Write([]byte{byte(protocol.StreamControl)}); err != nil {
		return nil, nil, err
	}
	if err := cs.write(&protocol.Hello{Version: v, MinVersion: protocol.MinVersion, Software: "pgporter (older)"}); err != nil {
		return nil, nil, err
	}
	m, err := cs.next()
	if err != nil {
		return nil, nil, err
	}
	cs.version = min(v, m.(*protocol.Hello).Version)
	return conn, cs, nil
}
