// Package stage is the runtime every consuming stage runs on: it pulls
// batches from a durable consumer, hands them to the stage's Handler, and
// acts on each message's Outcome (ack, retry later, dead-letter), with
// bounded deliveries, bounded waits and panics recovered. It also publishes
// with bounded waits and tracks whether a stage is making progress.
package stage

import "fmt"

// Verdict says what the runtime does with a handled message.
type Verdict int

const (
	// Ack: the message is done.
	Ack Verdict = iota
	// Retry: the infrastructure failed (NATS unavailable, storage full). The
	// message is delivered again later, as often as it takes: such failures
	// never spend its failure budget, so good data is never dead-lettered.
	Retry
	// Fail: handling this message failed. It is tried again until it has
	// failed MaxFailures times, then dead-lettered with the last error.
	Fail
	// Reject: the message is invalid: dead-letter it now.
	Reject
)

func (v Verdict) String() string {
	switch v {
	case Ack:
		return "ack"
	case Retry:
		return "retry"
	case Fail:
		return "fail"
	case Reject:
		return "reject"
	}
	return fmt.Sprintf("verdict(%d)", int(v))
}

// Outcome is what handling one message came to.
type Outcome struct {
	Verdict Verdict
	// Err says why, for every verdict but Ack. Its incident.Reason, if it
	// has one, becomes the dead-letter reason.
	Err error
	// Type is the incident type, for the dead-letter subject ("" unknown).
	Type string
	// ID is the incident id, to de-duplicate the dead letter ("" unknown).
	ID string
}

// Done is the outcome of a message handled in full.
func Done() Outcome { return Outcome{Verdict: Ack} }

// Retried is the outcome of a message the infrastructure failed.
func Retried(err error) Outcome { return Outcome{Verdict: Retry, Err: err} }

// Failed is the outcome of a message whose own handling failed.
func Failed(err error) Outcome { return Outcome{Verdict: Fail, Err: err} }

// Rejected is the outcome of an invalid message of type t with id.
func Rejected(t, id string, err error) Outcome {
	return Outcome{Verdict: Reject, Err: err, Type: t, ID: id}
}
