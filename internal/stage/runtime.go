package stage

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"runtime/debug"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/incidentpipe/pipeline/internal/dlq"
	"github.com/incidentpipe/pipeline/internal/incident"
	"github.com/incidentpipe/pipeline/internal/wait"
)

// Handler handles a batch of messages and returns one Outcome per message,
// in order. It must not ack or nak: the runtime does, from the outcomes.
type Handler func(ctx context.Context, msgs []jetstream.Msg) []Outcome

// Options configure Consume.
type Options struct {
	// Stage names the stage in dead-letter subjects, logs and metrics.
	Stage string
	// DLQ stores what is dead-lettered.
	DLQ dlq.Publisher
	// Batch is the most messages handed to the handler at once (default 500).
	Batch int
	// MaxFailures is how many times a message's own handling may fail
	// (Fail, or a panic) before it is dead-lettered (default 5).
	MaxFailures int
	// RetryDelay is how long a retried message waits (default 2s).
	RetryDelay time.Duration
	// HandleTimeout bounds one call of the handler and the acting on its
	// outcomes (default 20s); the batch is told in progress meanwhile.
	HandleTimeout time.Duration
	// Progress records stalls and failures; required.
	Progress *Progress
	// DeadLettered, when set, is called for each message dead-lettered.
	DeadLettered func(reason string)
	// Conn, when set, is the connection the consumer is read over: it is
	// made to reconnect when the consumer cannot be read over it any more
	// (its server cut off from the cluster, its clients still reaching it).
	Conn   *nats.Conn
	Logger *slog.Logger
}

func (o *Options) defaults() {
	if o.Batch <= 0 {
		o.Batch = 500
	}
	if o.MaxFailures <= 0 {
		o.MaxFailures = 5
	}
	if o.RetryDelay <= 0 {
		o.RetryDelay = 2 * time.Second
	}
	if o.HandleTimeout <= 0 {
		o.HandleTimeout = 20 * time.Second
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
}

// maxTracked bounds the failure counts kept in memory; past it they are
// forgotten (a message may then fail a few more times before its letter).
const maxTracked = 10_000

// Consume pulls from cons and runs h on each batch until ctx ends.
func Consume(ctx context.Context, cons jetstream.Consumer, h Handler, o Options) {
	o.defaults()
	r := &runner{o: o, h: h, failures: map[uint64]int{}}
	pullBatches(ctx, cons, o.Conn, o.Batch, o.Progress.stuck, o.Logger, func(msgs []jetstream.Msg) {
		if stalled := r.handle(ctx, msgs); stalled {
			r.backoff = min(max(2*r.backoff, 100*time.Millisecond), 30*time.Second)
			_ = wait.For(ctx, r.backoff)
		} else {
			r.backoff = 0
		}
	})
}

type runner struct {
	o        Options
	h        Handler
	failures map[uint64]int // stream sequence → own failures so far
	backoff  time.Duration
}

// handle runs the handler on msgs and acts on the outcomes; it reports
// whether the infrastructure failed.
func (r *runner) handle(ctx context.Context, msgs []jetstream.Msg) (stalled bool) {
	ctx, cancel := context.WithTimeout(ctx, r.o.HandleTimeout)
	defer cancel()
	stop := inProgress(msgs)
	outcomes, _, perr := r.call(ctx, msgs)
	if perr != nil {
		// Which message panicked is unknown: handle each alone.
		outcomes = make([]Outcome, len(msgs))
		for i, m := range msgs {
			out, stack, err := r.call(ctx, []jetstream.Msg{m})
			if err != nil {
				// Logged at most once a minute, with its stack.
				r.o.Progress.MessageFailed(KindPanic, err, "subject", m.Subject(), "stack", stack)
				out = []Outcome{{Verdict: Fail, Err: err}}
			}
			outcomes[i] = out[0]
		}
	}
	stop()
	progressed := false
	for i, m := range msgs {
		out := outcomes[i]
		if out.Verdict == Fail {
			out = r.budget(m, out)
		}
		switch out.Verdict {
		case Ack:
			r.forget(m)
			_ = m.Ack()
			progressed = true
		case Retry:
			r.o.Progress.Stalled(out.Err)
			stalled = true
			_ = m.NakWithDelay(r.o.RetryDelay)
		case Fail:
			_ = m.NakWithDelay(r.o.RetryDelay)
		case Reject:
			if err := r.deadLetter(ctx, m, out); err != nil {
				r.o.Progress.Stalled(err)
				stalled = true
				_ = m.NakWithDelay(r.o.RetryDelay)
				continue
			}
			r.forget(m)
			_ = m.Ack() // only once its dead letter is stored
			progressed = true
		}
	}
	if progressed && !stalled {
		r.o.Progress.OK()
	}
	return stalled
}

// InProgressEvery is how often the messages of a batch being handled are
// told in progress: a third of the consumers' AckWait (10 s, topology), so
// that a long batch is not delivered again meanwhile, while a message
// delivered to a pull that was lost (its consumer's leader changed) comes
// again within seconds, not half a minute.
const InProgressEvery = 3 * time.Second

// inProgress tells msgs in progress every InProgressEvery until the
// returned stop is called.
func inProgress(msgs []jetstream.Msg) (stop func()) {
	done, stopped := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(stopped)
		t := time.NewTicker(InProgressEvery)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-t.C:
				for _, m := range msgs {
					_ = m.InProgress()
				}
			}
		}
	}()
	return func() { close(done); <-stopped }
}

// call runs the handler, turning a panic into an error (and its stack).
func (r *runner) call(ctx context.Context, msgs []jetstream.Msg) (out []Outcome, stack string, err error) {
	defer func() {
		if p := recover(); p != nil {
			err, stack = fmt.Errorf("%w: %v", errPanic, p), string(debug.Stack())
		}
	}()
	out = r.h(ctx, msgs)
	if len(out) != len(msgs) {
		return nil, "", fmt.Errorf("handler returned %d outcomes for %d messages", len(out), len(msgs))
	}
	return out, "", nil
}

// budget counts a failure of m and turns it into a rejection once m has
// failed MaxFailures times.
func (r *runner) budget(m jetstream.Msg, out Outcome) Outcome {
	seq := sequence(m)
	if len(r.failures) >= maxTracked {
		clear(r.failures)
	}
	r.failures[seq]++
	n := r.failures[seq]
	if out.Verdict == Fail && !errors.Is(out.Err, errPanic) {
		r.o.Progress.MessageFailed(KindMessage, out.Err, "subject", m.Subject(), "failures", n)
	}
	if n < r.o.MaxFailures {
		return out
	}
	out.Verdict = Reject
	out.Err = &incident.InvalidError{Reason: dlq.ReasonRepeatedFailure, Detail: fmt.Sprintf("failed %d times: %v", n, out.Err)}
	return out
}

func (r *runner) forget(m jetstream.Msg) { delete(r.failures, sequence(m)) }

func (r *runner) deadLetter(ctx context.Context, m jetstream.Msg, out Outcome) error {
	id := out.ID
	if id == "" {
		id = fmt.Sprintf("seq-%d", sequence(m))
	}
	letter := dlq.Letter{Type: out.Type, ID: id, Subject: m.Subject(), Data: m.Data(), Err: out.Err}
	if md, err := m.Metadata(); err == nil {
		letter.Stream, letter.Sequence = md.Stream, md.Sequence.Stream
	}
	if err := r.o.DLQ.Publish(ctx, letter); err != nil {
		return err
	}
	if r.o.DeadLettered != nil {
		r.o.DeadLettered(letter.Reason())
	}
	r.o.Logger.Debug("message dead-lettered", "stage", r.o.Stage, "subject", m.Subject(), "reason", letter.Reason(), "error", out.Err)
	return nil
}

// sequence is m's stream sequence, which identifies it across deliveries.
func sequence(m jetstream.Msg) uint64 {
	md, err := m.Metadata()
	if err != nil {
		return 0
	}
	return md.Sequence.Stream
}

var errPanic = errors.New("handler panicked")
