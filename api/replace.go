package api

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/incidentpipe/pipeline/internal/topology"
)

// The view's bucket can be replaced under a running API: an operator's
// rebuild by hand deletes it, and a restarted projector creates it anew and
// replays INCIDENTS_ENRICHED into it. The API tells the buckets apart by
// their stream's creation time. While the new one fills, it serves the
// last complete view; once the projector has caught up (nothing pending on
// its consumer, and every write of it read), it serves the new one and
// sends `reset` to the open /events streams (versions start again).

var (
	errViewGone     = errors.New("the view's bucket was deleted; serving the last view until it is back")
	errViewReplaced = errors.New("the view's bucket was replaced; serving the last view until the new one is replayed")
)

// withoutProjector is how long a replaced view waits for the projector's
// consumer to appear before it is served as it is.
const withoutProjector = time.Minute

// bucketCreated returns when the view's bucket was created.
func bucketCreated(ctx context.Context, js jetstream.JetStream) (time.Time, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	st, err := js.Stream(ctx, topology.KVStream(topology.BucketView))
	if err != nil {
		return time.Time{}, err
	}
	return st.CachedInfo().Created, nil
}

// checkBucket returns errViewGone or errViewReplaced when the bucket
// created at created is no longer there; other errors are ignored (the
// watch's own checks see a dead connection).
func checkBucket(ctx context.Context, js jetstream.JetStream, created time.Time) error {
	now, err := bucketCreated(ctx, js)
	switch {
	case errors.Is(err, jetstream.ErrStreamNotFound):
		return errViewGone
	case err == nil && !now.Equal(created):
		return errViewReplaced
	}
	return nil
}

// caughtUp reports whether a replaced view is complete: the projector's
// consumer has nothing pending and every write to the bucket was read (or
// no projector appeared for withoutProjector).
func (s *store) caughtUp(ctx context.Context, js jetstream.JetStream) (bool, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	cons, err := js.Consumer(ctx, topology.StreamEnriched, topology.ConsumerProjector)
	if errors.Is(err, jetstream.ErrConsumerNotFound) || errors.Is(err, jetstream.ErrStreamNotFound) {
		if s.projectorMissing.IsZero() {
			s.projectorMissing = time.Now()
		}
		return time.Since(s.projectorMissing) >= withoutProjector, nil
	}
	s.projectorMissing = time.Time{}
	if err != nil {
		return false, fmt.Errorf("reading the projector's consumer: %w", err)
	}
	info := cons.CachedInfo()
	if info.NumPending > 0 || info.NumAckPending > 0 {
		return false, nil
	}
	st, err := js.Stream(ctx, topology.KVStream(topology.BucketView))
	if err != nil {
		return false, fmt.Errorf("reading the view's bucket: %w", err)
	}
	return s.revision >= st.CachedInfo().State.LastSeq, nil
}

// adopt serves the replaced view: the rankings of the old one go (their
// versions mean nothing now) and open /events streams are sent `reset`.
func (s *store) adopt(created time.Time) {
	s.replacing, s.watched = false, created
	if s.cursors != nil {
		s.cursors.clear()
	}
	s.employeesDirty, s.unattributedDirty, s.rerankAll = true, true, true
	s.replaced = true
	s.rebuild()
	s.log.Info("serving the replaced view", "version", s.snap.Load().version, "employees", len(s.snap.Load().keys))
}
