package mover

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/pgporter/pgporter/protocol"
	"github.com/quic-go/quic-go"
)

// JobRunner runs jobs that orchestrators hand this mover (the staging half
// of an export session). The orchestrator package implements it; the mover
// only carries the messages. RunJob reports events (JSON objects) through
// emit and returns when the job ends; ctx ends when the orchestrator goes
// away or the mover shuts down.
type JobRunner interface {
	RunJob(ctx context.Context, body []byte, emit func(event []byte)) error
}

// jobIdleTimeout bounds how long a job connection may be silent.
const jobIdleTimeout = 6 * time.Second

// jobEnd is the last event of every job.
type jobEnd struct {
	Kind  string `json:"kind"` // "end"
	Error string `json:"error,omitempty"`
	Code  string `json:"code,omitempty"`
	// Reason names the job runner's own kind of failure, when the error
	// has one (JobReasoner), so that the other side can match it as a
	// value rather than by its text.
	Reason string `json:"reason,omitempty"`
}

// JobReasoner is an error of a JobRunner that names its kind for the
// orchestrator across the wire (JobError.Reason).
type JobReasoner interface{ JobReason() string }

// runJob serves one RunJob: it needs the orchestrate permission, and lasts
// as long as the connection.
func (s *Server) runJob(ctx context.Context, conn *quic.Conn, peer PeerID, cs *controlStream, m *protocol.RunJob, log *slog.Logger) {
	if err := s.trust.Check(peer, PermOrchestrate); err != nil {
		cs.sendError(err)
		return
	}
	if s.o.Jobs == nil {
		cs.sendError(fmt.Errorf("%w: this mover runs no jobs (start it with 'pgporter mover serve' as a staging mover)", protocol.ErrPermission))
		return
	}
	// The job ends if the orchestrator's connection does.
	jctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stop := context.AfterFunc(conn.Context(), cancel)
	defer stop()
	log.Info("job started")
	err := s.o.Jobs.RunJob(jctx, m.Body, func(ev []byte) {
		if werr := cs.write(&protocol.JobEvent{Body: ev}); werr != nil {
			cancel() // nobody is listening any more
		}
	})
	end := jobEnd{Kind: "end"}
	if err != nil {
		end.Error = err.Error()
		end.Code = protocol.ToWire(err).Code.String()
		var r JobReasoner
		if errors.As(err, &r) {
			end.Reason = r.JobReason()
		}
		log.Warn("job failed", "err", err)
	} else {
		log.Info("job done")
	}
	body, _ := json.Marshal(end)
	_ = cs.write(&protocol.JobEvent{Body: body})
}

// JobError is a job's failure as the staging mover reported it.
type JobError struct {
	Message string
	Code    string
	Reason  string // the job runner's JobReasoner kind, if any
}

func (e *JobError) Error() string { return e.Message }

// RunJob hands a job to the mover at addr (which must present peer's
// identity and trust this identity with orchestrate) and calls onEvent with
// each event until the job ends. A job that fails is a *JobError.
func (s *Sender) RunJob(ctx context.Context, addr string, peer PeerID, body []byte, onEvent func(event []byte)) error {
	// A short idle timeout (keepalives run at a third of it): a staging
	// mover that dies is noticed in seconds, however long its steps.
	conn, cs, err := dialMoverFor(ctx, addr, s.id, peer, jobIdleTimeout, PermOrchestrate)
	if err != nil {
		return err
	}
	defer conn.CloseWithError(quic.ApplicationErrorCode(protocol.CloseOK), "")
	stop := context.AfterFunc(ctx, func() { conn.CloseWithError(quic.ApplicationErrorCode(protocol.CloseShutdown), "cancelled") })
	defer stop()
	if err := cs.write(&protocol.RunJob{Body: body}); err != nil {
		return err
	}
	for {
		m, err := cs.next()
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			return fmt.Errorf("job on %s: %w", addr, err)
		}
		ev, ok := m.(*protocol.JobEvent)
		if !ok {
			return fmt.Errorf("%w: expected JobEvent, got %s", protocol.ErrProtocol, m.Type())
		}
		var end jobEnd
		if json.Unmarshal(ev.Body, &end) == nil && end.Kind == "end" {
			if end.Error != "" {
				return &JobError{Message: end.Error, Code: end.Code, Reason: end.Reason}
			}
			return nil
		}
		onEvent(ev.Body)
	}
}

// ErrJobFailed matches every *JobError.
var ErrJobFailed = errors.New("job failed on the staging mover")

func (e *JobError) Is(target error) bool { return target == ErrJobFailed }
