package topology

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Options sets what may differ between deployments.
type Options struct {
	// Replicas of every stream and bucket (1, or 3 on a cluster).
	Replicas int
	// RawMaxAge is how long INCIDENTS_RAW keeps incidents: the window the
	// view can be rebuilt from. Zero keeps them forever.
	RawMaxAge time.Duration
	// EnrichedMaxAge is how long INCIDENTS_ENRICHED keeps incidents. Zero
	// keeps them forever.
	EnrichedMaxAge time.Duration
	// DLQMaxAge is how long INCIDENTS_DLQ keeps what failed.
	DLQMaxAge time.Duration
	// RawMaxBytes, EnrichedMaxBytes and DLQMaxBytes cap each stream's size
	// (0: no cap); the oldest messages go first.
	RawMaxBytes, EnrichedMaxBytes, DLQMaxBytes int64
	// DuplicateWindow is how long JetStream remembers message ids, covering
	// several producer copies polling the same upstream (config sets it
	// from POLL_INTERVAL).
	DuplicateWindow time.Duration
}

// DefaultOptions are the options of a single-node deployment.
func DefaultOptions() Options {
	return Options{
		Replicas:        1,
		DLQMaxAge:       30 * 24 * time.Hour,
		DuplicateWindow: 10 * time.Minute,
	}
}

func (o Options) replicas() int { return max(o.Replicas, 1) }

// orUnlimited maps "no cap" (0) to JetStream's -1.
func orUnlimited(n int64) int64 {
	if n <= 0 {
		return -1
	}
	return n
}

// Streams returns the configuration of every stream.
func Streams(o Options) []jetstream.StreamConfig {
	return []jetstream.StreamConfig{
		{
			Name:        StreamRaw,
			Description: "Upstream incidents exactly as received; Nats-Msg-Id is the incident id",
			Subjects:    []string{RawSubjects},
			Storage:     jetstream.FileStorage,
			Retention:   jetstream.LimitsPolicy,
			MaxAge:      o.RawMaxAge,
			MaxBytes:    orUnlimited(o.RawMaxBytes),
			Duplicates:  o.DuplicateWindow,
			Replicas:    o.replicas(),
			// One fsync per batch of incidents: see stage.PublishAtomic.
			AllowAtomicPublish: true,
		},
		{
			Name:        StreamEnriched,
			Description: "Incidents with their resolved employee (or unattributed IP)",
			Subjects:    []string{EnrichedSubjects},
			Storage:     jetstream.FileStorage,
			Retention:   jetstream.LimitsPolicy,
			MaxAge:      o.EnrichedMaxAge,
			MaxBytes:    orUnlimited(o.EnrichedMaxBytes),
			Duplicates:  o.DuplicateWindow,
			Replicas:    o.replicas(),
			// One fsync per batch of incidents: see stage.PublishAtomic.
			AllowAtomicPublish: true,
		},
		{
			Name:        StreamDLQ,
			Description: "What a stage could not process, with the reason in headers",
			Subjects:    []string{DLQSubjects},
			Storage:     jetstream.FileStorage,
			Retention:   jetstream.LimitsPolicy,
			MaxAge:      o.DLQMaxAge,
			MaxBytes:    orUnlimited(o.DLQMaxBytes),
			Duplicates:  o.DuplicateWindow,
			Replicas:    o.replicas(),
		},
	}
}

// StreamNames is the name of every stream, those behind the buckets
// included.
func StreamNames() []string {
	var names []string
	for _, s := range Streams(DefaultOptions()) {
		names = append(names, s.Name)
	}
	for _, b := range Buckets(DefaultOptions()) {
		names = append(names, KVStream(b.Bucket))
	}
	return names
}

// Buckets returns the configuration of every key-value bucket.
func Buckets(o Options) []jetstream.KeyValueConfig {
	return []jetstream.KeyValueConfig{
		{
			Bucket:      BucketIdentities,
			Description: "IP (IPKey-encoded) to employee id",
			History:     1,
			Storage:     jetstream.FileStorage,
			Replicas:    o.replicas(),
		},
		{
			Bucket:      BucketView,
			Description: "Employee id to its GET /incidents document",
			History:     1,
			Storage:     jetstream.FileStorage,
			Replicas:    o.replicas(),
		},
	}
}

// EnricherConsumer is the durable consumer of the enricher on INCIDENTS_RAW.
func EnricherConsumer() jetstream.ConsumerConfig {
	return durable(ConsumerEnricher, RawSubjects)
}

// ProjectorConsumer is the durable consumer of the projector on INCIDENTS_ENRICHED.
func ProjectorConsumer() jetstream.ConsumerConfig {
	return durable(ConsumerProjector, EnrichedSubjects)
}

// AckWait is how long a delivered message may go unacknowledged before it
// is delivered again: short, so that one delivered to a pull that was lost
// (its consumer's leader changed, in a cluster) comes again within
// seconds; the stage runtime tells a batch it handles in progress every
// third of it.
const AckWait = 10 * time.Second

func durable(name, filter string) jetstream.ConsumerConfig {
	return jetstream.ConsumerConfig{
		Durable:       name,
		Description:   "pipeline stage " + name,
		DeliverPolicy: jetstream.DeliverAllPolicy,
		AckPolicy:     jetstream.AckExplicitPolicy,
		AckWait:       AckWait,
		MaxDeliver:    -1, // transient failures retry; invalid input goes to the DLQ instead
		MaxAckPending: 20000,
		FilterSubject: filter,
	}
}

// Ensure creates every stream and bucket that is missing and updates those
// whose configuration drifted. One whose configuration is as wanted is left
// alone: an update rewrites its metadata on disk at every start of every
// stage, which a power loss during the rewrite can empty. Replicas are
// never lowered: a command run without a cluster's NATS_REPLICAS keeps
// what the cluster has. Several services may call it at once.
func Ensure(ctx context.Context, js jetstream.JetStream, o Options) error {
	for _, cfg := range Streams(o) {
		if err := retryRace(ctx, func() error { return ensureStream(ctx, js, cfg) }); err != nil {
			return fmt.Errorf("ensuring stream %s: %w", cfg.Name, err)
		}
	}
	for _, cfg := range Buckets(o) {
		if err := retryRace(ctx, func() error { return ensureBucket(ctx, js, cfg) }); err != nil {
			return fmt.Errorf("ensuring bucket %s: %w", cfg.Bucket, err)
		}
	}
	return nil
}

func ensureStream(ctx context.Context, js jetstream.JetStream, cfg jetstream.StreamConfig) error {
	s, err := js.Stream(ctx, cfg.Name)
	switch {
	case errors.Is(err, jetstream.ErrStreamNotFound):
		_, err = js.CreateStream(ctx, cfg)
		return err
	case err != nil:
		return err
	}
	have := s.CachedInfo().Config
	keepMore(&cfg, have)
	if streamAsWanted(have, cfg) {
		return nil
	}
	_, err = js.UpdateStream(ctx, cfg)
	return err
}

// keepMore keeps what a stream has where the wanted configuration would
// keep less: more replicas, a longer age, a larger size. Whoever starts
// with other settings (a command run without the cluster's, a service with
// a shorter retention) never loses data that way; shortening a retention
// is an operator's step (nats stream edit).
func keepMore(want *jetstream.StreamConfig, have jetstream.StreamConfig) {
	want.Replicas = max(want.Replicas, have.Replicas)
	if have.MaxAge == 0 || (want.MaxAge != 0 && have.MaxAge > want.MaxAge) {
		want.MaxAge = have.MaxAge // 0 keeps for ever
	}
	if have.MaxBytes <= 0 || (want.MaxBytes > 0 && have.MaxBytes > want.MaxBytes) {
		want.MaxBytes = have.MaxBytes // -1 is no cap
	}
}

// streamAsWanted compares the fields Streams sets.
func streamAsWanted(have, want jetstream.StreamConfig) bool {
	return have.Description == want.Description && slices.Equal(have.Subjects, want.Subjects) &&
		have.Storage == want.Storage && have.Retention == want.Retention && have.MaxAge == want.MaxAge &&
		have.MaxBytes == want.MaxBytes && have.Duplicates == want.Duplicates && have.Replicas == want.Replicas &&
		have.AllowAtomicPublish == want.AllowAtomicPublish
}

func ensureBucket(ctx context.Context, js jetstream.JetStream, cfg jetstream.KeyValueConfig) error {
	kv, err := js.KeyValue(ctx, cfg.Bucket)
	switch {
	case errors.Is(err, jetstream.ErrBucketNotFound):
		// Made meanwhile by another: retryRace compares again.
		if _, err = js.CreateKeyValue(ctx, cfg); err != nil {
			return err
		}
		return allowAtomic(ctx, js, KVStream(cfg.Bucket))
	case err != nil:
		return err
	}
	st, err := kv.Status(ctx)
	if err != nil {
		return err
	}
	have := st.Config()
	cfg.Replicas = max(cfg.Replicas, have.Replicas)
	cfg.History = max(cfg.History, have.History)
	if have.Description != cfg.Description || have.History != cfg.History ||
		have.Storage != cfg.Storage || have.Replicas != cfg.Replicas {
		if _, err = js.UpdateKeyValue(ctx, cfg); err != nil {
			return err
		}
	}
	return allowAtomic(ctx, js, KVStream(cfg.Bucket))
}

// allowAtomic lets a bucket's stream take atomic batches (a bucket's own
// configuration has no such field): the projector writes the view's pieces
// and manifests a batch at a time, one fsync each.
func allowAtomic(ctx context.Context, js jetstream.JetStream, stream string) error {
	s, err := js.Stream(ctx, stream)
	if err != nil {
		return err
	}
	cfg := s.CachedInfo().Config
	if cfg.AllowAtomicPublish {
		return nil
	}
	cfg.AllowAtomicPublish = true
	_, err = js.UpdateStream(ctx, cfg)
	return err
}

// EnsureConsumer creates a durable consumer on stream, or updates it when
// its configuration drifted (as Ensure, an unchanged one is not rewritten).
func EnsureConsumer(ctx context.Context, js jetstream.JetStream, stream string, cfg jetstream.ConsumerConfig) (jetstream.Consumer, error) {
	var c jetstream.Consumer
	err := retryRace(ctx, func() error {
		var err error
		c, err = js.Consumer(ctx, stream, cfg.Durable)
		switch {
		case errors.Is(err, jetstream.ErrConsumerNotFound):
			c, err = js.CreateConsumer(ctx, stream, cfg)
			return err
		case err != nil:
			return err
		}
		if consumerAsWanted(c.CachedInfo().Config, cfg) {
			return nil
		}
		c, err = js.UpdateConsumer(ctx, stream, cfg)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("ensuring consumer %s on %s: %w", cfg.Durable, stream, err)
	}
	return c, nil
}

// consumerAsWanted compares the fields durable sets.
func consumerAsWanted(have, want jetstream.ConsumerConfig) bool {
	return have.Durable == want.Durable && have.Description == want.Description &&
		have.DeliverPolicy == want.DeliverPolicy && have.AckPolicy == want.AckPolicy &&
		have.AckWait == want.AckWait && have.MaxDeliver == want.MaxDeliver &&
		have.MaxAckPending == want.MaxAckPending && have.FilterSubject == want.FilterSubject
}

// retryRace retries an idempotent create-or-update a few times: two copies
// creating the same thing at once may see each other's half-done work.
func retryRace(ctx context.Context, f func() error) error {
	var err error
	for attempt := range 5 {
		if err = f(); err == nil {
			return nil
		}
		if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
			return err
		}
		select {
		case <-ctx.Done():
			return errors.Join(err, ctx.Err())
		case <-time.After(time.Duration(attempt+1) * 100 * time.Millisecond):
		}
	}
	return err
}

// Retry runs f (an Ensure or EnsureConsumer) until it succeeds, ctx ends,
// or it fails for a reason waiting cannot mend (IsConfigError). While a
// cluster elects its leaders, or the server is away, that is a wait with
// backoff, logged when it starts and then at most once a minute.
func Retry(ctx context.Context, log *slog.Logger, what string, f func(ctx context.Context) error) error {
	backoff := 250 * time.Millisecond
	var logged time.Time
	for attempt := 1; ; attempt++ {
		actx, cancel := context.WithTimeout(ctx, 15*time.Second)
		err := f(actx)
		cancel()
		switch {
		case err == nil:
			if attempt > 1 {
				log.Info("NATS topology in place", "what", what, "attempts", attempt)
			}
			return nil
		case ctx.Err() != nil:
			return fmt.Errorf("%s: %w", what, ctx.Err())
		case IsConfigError(err):
			return fmt.Errorf("%s: %w", what, err)
		}
		if time.Since(logged) >= time.Minute {
			logged = time.Now()
			log.Warn("NATS not ready for the topology; waiting", "what", what, "attempt", attempt, "error", err)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s: %w", what, ctx.Err())
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 10*time.Second)
	}
}

// IsConfigError reports whether err is JetStream refusing a request as
// invalid or forbidden (a bad configuration, missing permissions): retrying
// the same request cannot succeed.
func IsConfigError(err error) bool {
	var apiErr *jetstream.APIError
	if errors.As(err, &apiErr) {
		return apiErr.Code == 400 || apiErr.Code == 403
	}
	return errors.Is(err, nats.ErrPermissionViolation) || errors.Is(err, nats.ErrAuthorization)
}

// AwaitConsumer is EnsureConsumer retried (see Retry) until the server can
// take it: what a stage does at start.
func AwaitConsumer(ctx context.Context, log *slog.Logger, js jetstream.JetStream, stream string, cfg jetstream.ConsumerConfig) (jetstream.Consumer, error) {
	var cons jetstream.Consumer
	err := Retry(ctx, log, "ensuring consumer "+cfg.Durable, func(ctx context.Context) error {
		c, err := EnsureConsumer(ctx, js, stream, cfg)
		cons = c
		return err
	})
	return cons, err
}
