package mover

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/pgporter/pgporter/protocol"
	"github.com/quic-go/quic-go"
)

// JobRunner runs jobs that orchestrators hand this mover (the staging half
// of an export session, or a publication's). The orchestrator package
// implements it; the mover only carries the messages, which package
// protocol has decoded and checked (kind, version, size). RunJob reports
// events through emit, each a complete JobEvent of protocol.JobVersion and
// never of kind EventEnd: the mover sends the end event itself, from
// RunJob's error. It returns when the job ends; ctx ends when the
// orchestrator goes away or the mover shuts down.
type JobRunner interface {
	RunJob(ctx context.Context, job *protocol.RunJob, emit func(*protocol.JobEvent)) error
}

// jobIdleTimeout bounds how long a job connection may be silent.
const jobIdleTimeout = 6 * time.Second

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
	if cs.version < protocol.JobsVersion {
		cs.sendError(fmt.Errorf("%w: jobs need protocol version %d, the orchestrator (%s) speaks %d: upgrade it", protocol.ErrVersion, protocol.JobsVersion, cs.peerSoftware, cs.version))
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
	log.Info("job started", "job", m.Kind)
	err := s.o.Jobs.RunJob(jctx, m, func(ev *protocol.JobEvent) {
		if werr := cs.write(ev); werr != nil {
			log.Warn("job event not sent", "err", werr)
			cancel() // nobody is listening any more, or the runner broke its contract
		}
	})
	end := &protocol.JobEvent{Kind: protocol.EventEnd, Version: protocol.JobVersion}
	if err != nil {
		end.Error = err.Error()
		end.Code = protocol.ToWire(err).Code.String()
		var r JobReasoner
		if errors.As(err, &r) {
			end.Reason = r.JobReason()
		}
		log.Warn("job failed", "job", m.Kind, "err", err)
	} else {
		log.Info("job done", "job", m.Kind)
	}
	if werr := cs.write(end); werr != nil {
		log.Debug("job end not sent", "err", werr)
	}
}

// JobError is a job's failure as the staging mover reported it.
type JobError struct {
	Message string
	Code    string
	Reason  string // the job runner's JobReasoner kind, if any
}

func (e *JobError) Error() string { return e.Message }

// RunJob hands job to the mover at addr (which must present peer's
// identity, speak protocol.JobsVersion or later, and trust this identity
// with orchestrate) and calls onEvent with each event before the end
// event. A job that fails is a *JobError.
func (s *Sender) RunJob(ctx context.Context, addr string, peer PeerID, job *protocol.RunJob, onEvent func(*protocol.JobEvent)) error {
	// A short idle timeout (keepalives run at a third of it): a staging
	// mover that dies is noticed in seconds, however long its steps.
	conn, cs, err := dialMoverFor(ctx, addr, s.id, peer, jobIdleTimeout, PermOrchestrate)
	if err != nil {
		return err
	}
	defer conn.CloseWithError(quic.ApplicationErrorCode(protocol.CloseOK), "")
	if cs.version < protocol.JobsVersion {
		return fmt.Errorf("%w: the mover at %s (%s) speaks protocol %d, and jobs need %d: upgrade it", protocol.ErrVersion, addr, cs.peerSoftware, cs.version, protocol.JobsVersion)
	}
	stop := context.AfterFunc(ctx, func() { conn.CloseWithError(quic.ApplicationErrorCode(protocol.CloseShutdown), "cancelled") })
	defer stop()
	if err := cs.write(job); err != nil {
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
		if ev.Kind == protocol.EventEnd {
			if ev.Error != "" {
				return &JobError{Message: ev.Error, Code: ev.Code, Reason: ev.Reason}
			}
			return nil
		}
		onEvent(ev)
	}
}

// ErrJobFailed matches every *JobError.
var ErrJobFailed = errors.New("job failed on the staging mover")

func (e *JobError) Is(target error) bool { return target == ErrJobFailed }
