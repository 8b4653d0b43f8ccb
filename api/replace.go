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

// bucketInfo reads the view's bucket's stream: when it was created, and
// its last write.
func bucketInfo(ctx context.Context, js jetstream.JetStream) (*jetstream.StreamInfo, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	st, err := js.Stream(ctx, topology.KVStream(topology.BucketView))
	if err != nil {
		return nil, err
	}
	return st.CachedInfo(), nil
}

// checkBucket returns errViewGone or errViewReplaced when the bucket
// created at created is no longer there, else what it read of the bucket
// (nil when it could not be read: the watch's own checks see a dead
// connection).
func checkBucket(ctx context.Context, js jetstream.JetStream, created time.Time) (*jetstream.StreamInfo, error) {
	info, err := bucketInfo(ctx, js)
	switch {
	case errors.Is(err, jetstream.ErrStreamNotFound):
		return nil, errViewGone
	case err != nil:
		return nil, nil
	case !info.Created.Equal(created):
		return nil, errViewReplaced
	}
	return info, nil
}

// caughtUp reports whether a replaced view is complete: the projector's
// consumer has nothing pending and every write to the bucket (as bucket,
// its stream's state, says) was read, or no projector appeared for
// withoutProjector.
func (s *store) caughtUp(ctx context.Context, js jetstream.JetStream, bucket *jetstream.StreamInfo) (bool, error) {
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
	if bucket == nil {
		return false, errors.New("the view's bucket cannot be read")
	}
	info := cons.CachedInfo()
	return info.NumPending == 0 && info.NumAckPending == 0 && s.revision >= bucket.State.LastSeq, nil
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
	snap := s.snap.Load()
	s.log.Info("serving the replaced view", "version", snap.version, "employees", len(snap.keys))
}
