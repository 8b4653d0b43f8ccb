package stage

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Failure kinds, the values of the kind label of
// incidents_stage_failures_total.
const (
	KindInfrastructure = "infrastructure" // NATS unavailable, storage full, timeouts
	KindMessage        = "message"        // one message's own handling failed
	KindPanic          = "panic"          // a handler panicked
)

// Progress tracks whether a stage is making progress. A stage that cannot
// (its writes fail) says so once per change of state: one log line, the
// gauge incidents_stage_stalled, and a failing readiness check; failures are
// counted, and logged at most once per LogEvery while they repeat.
type Progress struct {
	stage    string
	log      *slog.Logger
	stalled  prometheus.Gauge
	failures *prometheus.CounterVec
	logEvery time.Duration

	mu         sync.Mutex
	since      time.Time // when the current stall began; zero when not stalled
	lastErr    error
	progressed time.Time     // the last progress (or the start)
	quietMax   time.Duration // NoProgressAfter; shorter in tests
	waiting    uint64        // the consumer's lag at its last reading
	lagErr     error         // why the lag could not be read, since lagErrAt
	lagErrAt   time.Time
	lastLogged map[string]time.Time // kind → last failure logged
	suppressed map[string]int       // kind → failures not logged since
}

// NewProgress registers the stage's progress metrics on reg.
func NewProgress(stage string, reg prometheus.Registerer, log *slog.Logger) *Progress {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	p := &Progress{
		stage: stage,
		log:   log,
		stalled: prometheus.NewGauge(prometheus.GaugeOpts{
			Name:        "incidents_stage_stalled",
			Help:        "1 while the stage cannot make progress (its writes to NATS fail), else 0.",
			ConstLabels: prometheus.Labels{"stage": stage},
		}),
		failures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name:        "incidents_stage_failures_total",
			Help:        "Failed attempts at handling or publishing, by kind (infrastructure, message, panic).",
			ConstLabels: prometheus.Labels{"stage": stage},
		}, []string{"kind"}),
		logEvery:   time.Minute,
		progressed: time.Now(),
		quietMax:   NoProgressAfter,
		lastLogged: map[string]time.Time{},
		suppressed: map[string]int{},
	}
	progressed := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name:        "incidents_stage_last_progress_timestamp_seconds",
		Help:        "When the stage last made progress (handled a batch, or published a poll's page); with its consumer's lag, the stall alert.",
		ConstLabels: prometheus.Labels{"stage": stage},
	}, func() float64 {
		p.mu.Lock()
		defer p.mu.Unlock()
		return float64(p.progressed.UnixNano()) / 1e9
	})
	reg.MustRegister(p.stalled, p.failures, progressed)
	for _, k := range []string{KindInfrastructure, KindMessage, KindPanic} {
		p.failures.WithLabelValues(k)
	}
	return p
}

// OK records progress: a stall, if any, is over.
func (p *Progress) OK() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.progressed = time.Now()
	if p.since.IsZero() {
		return
	}
	p.log.Info("stage resumed", "stage", p.stage, "stalled_for", time.Since(p.since).Round(time.Millisecond).String())
	p.since, p.lastErr = time.Time{}, nil
	p.stalled.Set(0)
}

// Stalled records that the infrastructure failed: the stage is stalled
// until the next OK.
func (p *Progress) Stalled(err error) {
	p.failures.WithLabelValues(KindInfrastructure).Inc()
	p.mu.Lock()
	defer p.mu.Unlock()
	p.lastErr = err
	if p.since.IsZero() {
		p.since = time.Now()
		p.stalled.Set(1)
		p.log.Warn("stage stalled: cannot make progress; retrying", "stage", p.stage, "error", err)
		p.lastLogged[KindInfrastructure] = p.since
		return
	}
	p.logLimited(KindInfrastructure, "stage still stalled", err)
}

// MessageFailed records that one message's handling failed (kind
// KindMessage or KindPanic), logging it at most once per LogEvery.
func (p *Progress) MessageFailed(kind string, err error, attrs ...any) {
	p.failures.WithLabelValues(kind).Inc()
	p.mu.Lock()
	defer p.mu.Unlock()
	p.logLimited(kind, "handling a message failed", err, attrs...)
}

// logLimited logs msg unless a failure of kind was logged less than
// logEvery ago; it then counts the failure for the next line. p.mu is held.
func (p *Progress) logLimited(kind, msg string, err error, attrs ...any) {
	now := time.Now()
	if now.Sub(p.lastLogged[kind]) < p.logEvery {
		p.suppressed[kind]++
		return
	}
	attrs = append(attrs, "stage", p.stage, "kind", kind, "error", err)
	if n := p.suppressed[kind]; n > 0 {
		attrs = append(attrs, "not_logged_since_last", n)
	}
	if !p.since.IsZero() {
		attrs = append(attrs, "stalled_for", now.Sub(p.since).Round(time.Second).String())
	}
	p.log.Warn(msg, attrs...)
	p.lastLogged[kind], p.suppressed[kind] = now, 0
}

// StalledGauge is the incidents_stage_stalled gauge, for tests.
func (p *Progress) StalledGauge() prometheus.Gauge { return p.stalled }

// NoProgressAfter is how long a stage may go without progress while work
// waits for it (or without being able to read how much waits) before it is
// not ready: with TrackLag's readings every 5 s, within 15 s.
const NoProgressAfter = 10 * time.Second

// lag records a reading of the consumer's lag (nil p: none kept).
func (p *Progress) lag(n uint64) {
	if p == nil {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if n == 0 || p.waiting == 0 {
		// Work that just arrived has had no time yet.
		if grace := time.Now().Add(-p.quietMax / 2); p.progressed.Before(grace) {
			p.progressed = grace
		}
	}
	p.waiting, p.lagErr, p.lagErrAt = n, nil, time.Time{}
}

// stuck reports whether work waits and none was done for the quiet limit.
func (p *Progress) stuck() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.waiting > 0 && time.Since(p.progressed) >= p.quietMax
}

// lagUnknown records that the consumer's lag could not be read.
func (p *Progress) lagUnknown(err error) {
	if p == nil {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.lagErr == nil {
		p.lagErrAt = time.Now()
	}
	p.lagErr = err
}

// Check is a readiness check: it fails while the stage is stalled, while
// work waits and none was done for NoProgressAfter, and while the
// consumer's state cannot be read for as long.
func (p *Progress) Check(context.Context) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	now := time.Now()
	switch {
	case !p.since.IsZero():
		return fmt.Errorf("stalled for %s: %w", now.Sub(p.since).Round(time.Second), p.lastErr)
	case p.lagErr != nil && now.Sub(p.lagErrAt) >= p.quietMax:
		return fmt.Errorf("the consumer's state cannot be read for %s: %w", now.Sub(p.lagErrAt).Round(time.Second), p.lagErr)
	case p.waiting > 0 && now.Sub(p.progressed) >= p.quietMax:
		return fmt.Errorf("%d messages wait and none was handled for %s", p.waiting, now.Sub(p.progressed).Round(time.Second))
	}
	return nil
}
