package protocol

import (
	"encoding/json"
	"fmt"
)

// Messages of remote orchestration: an orchestrator trusted with
// orchestrate hands a staging mover a job (an export session's staging
// half), and the staging mover reports its steps until the job ends. Both
// travel on the control stream; their bodies are JSON objects whose fields
// belong to the orchestrator (docs/PROTOCOL.md lists them).

// MaxJobBody bounds RunJob.Body and JobEvent.Body.
const MaxJobBody = 64 << 10

// RunJob asks a staging mover to run a job. The mover answers with JobEvent
// messages, the last of which has "kind":"end".
type RunJob struct {
	Body []byte // a JSON object, at most MaxJobBody bytes
}

func (*RunJob) Type() Type               { return TypeRunJob }
func (m *RunJob) Append(b []byte) []byte { return appendBytes(b, m.Body) }
func (m *RunJob) decode(d *decoder)      { m.Body = cloneBytes(d.bytes("job body", MaxJobBody)) }
func (m *RunJob) check() error           { return checkJSONObject("job body", m.Body) }

// JobEvent reports a step of a running job.
type JobEvent struct {
	Body []byte // a JSON object, at most MaxJobBody bytes
}

func (*JobEvent) Type() Type               { return TypeJobEvent }
func (m *JobEvent) Append(b []byte) []byte { return appendBytes(b, m.Body) }
func (m *JobEvent) decode(d *decoder)      { m.Body = cloneBytes(d.bytes("job event", MaxJobBody)) }
func (m *JobEvent) check() error           { return checkJSONObject("job event", m.Body) }

func cloneBytes(b []byte) []byte {
	if b == nil {
		return nil
	}
	return append([]byte(nil), b...)
}

// checkJSONObject accepts a well-formed JSON object of at most MaxJobBody
// bytes.
func checkJSONObject(field string, b []byte) error {
	if len(b) > MaxJobBody {
		return violation("%s of %d bytes exceeds %d", field, len(b), MaxJobBody)
	}
	var v map[string]json.RawMessage
	if err := json.Unmarshal(b, &v); err != nil || v == nil {
		return fmt.Errorf("%w: %s is not a JSON object (%v)", ErrProtocol, field, err)
	}
	return nil
}
