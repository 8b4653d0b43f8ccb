package projector

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/incidentpipe/pipeline/internal/topology"
	"github.com/incidentpipe/pipeline/internal/view"
)

// prefetchBatch is how many manifests one request reads: the server
// answers at most 1024 subjects at once.
const prefetchBatch = 1000

// prefetch reads the manifests of the employees this projector does not
// remember, many in one request (a direct get of each key's last value),
// so that a batch over many employees costs a round trip per thousand
// instead of one each. What it cannot tell (a truncated answer, a whole
// document of an earlier version, an error) is left to prepare's own read.
func (ps *pieces) prefetch(ctx context.Context, js jetstream.JetStream, employees []string) error {
	var want []string
	ps.mu.Lock()
	if time.Now().Before(ps.prefetchOff) {
		ps.mu.Unlock()
		return nil
	}
	for _, e := range employees {
		if _, ok := ps.manifests[e]; !ok {
			want = append(want, e)
		}
	}
	ps.mu.Unlock()
	for len(want) > 0 && ctx.Err() == nil {
		n := min(len(want), prefetchBatch)
		found, err := readManifests(ctx, js.Conn(), want[:n])
		if err != nil && ctx.Err() == nil {
			// prepare reads them one by one; a server that refuses (an
			// older one, or a user not allowed the request) is not asked
			// again for a while, rather than waited for on every batch.
			ps.mu.Lock()
			ps.prefetchOff = time.Now().Add(prefetchPause)
			ps.mu.Unlock()
			return err
		}
		ps.keepAll(found)
		want = want[n:]
	}
	return nil
}

// prefetchPause is how long manifests are read one by one after reading
// them together failed.
const prefetchPause = time.Minute

// prefetchIdle bounds the wait for each message of the answer to one
// request of manifests (a refused request gets none); a busy server's
// answer may take longer in all, as long as it keeps coming.
const prefetchIdle = 2 * time.Second

// readManifests reads the stored manifests of employees in one request.
// An employee absent from the bucket, or deleted, is an empty manifest at
// the revision a write must build on; a whole document of an earlier
// version is left out.
func readManifests(ctx context.Context, nc *nats.Conn, employees []string) (map[string]known, error) {
	req := struct {
		MultiLast []string `json:"multi_last"`
		MaxBytes  int      `json:"max_bytes"`
	}{MaxBytes: 32 << 20}
	for _, e := range employees {
		req.MultiLast = append(req.MultiLast, topology.KVSubject(topology.BucketView, topology.EmployeeKey(e)))
	}
	body, err := json.Marshal(req)
	if err != nil {
		return nil, err
	}
	inbox := nc.NewInbox()
	sub, err := nc.SubscribeSync(inbox)
	if err != nil {
		return nil, fmt.Errorf("reading manifests: %w", err)
	}
	defer func() { _ = sub.Unsubscribe() }()
	if err := nc.PublishRequest(topology.DirectGetSubject(topology.BucketView), inbox, body); err != nil {
		return nil, fmt.Errorf("reading manifests: %w", err)
	}
	found := make(map[string]known, len(employees))
	answered := make(map[string]bool, len(employees))
	// One answer per employee and an end: a server that sends more is
	// not followed further.
	for range len(employees) + 2 {
		wait, cancel := context.WithTimeout(ctx, prefetchIdle)
		msg, err := sub.NextMsgWithContext(wait)
		cancel()
		if err != nil {
			return nil, fmt.Errorf("reading manifests: %w", err)
		}
		switch msg.Header.Get(topology.HeaderStatus) {
		case "":
		case "404": // none of them is stored
			return absentAsEmpty(found, answered, employees), nil
		case "204": // the end; complete unless more were pending
			if p := msg.Header.Get(topology.HeaderNumPending); p != "" && p != "0" {
				return found, nil
			}
			return absentAsEmpty(found, answered, employees), nil
		default:
			return nil, fmt.Errorf("reading manifests: %s %s", msg.Header.Get(topology.HeaderStatus), msg.Header.Get(topology.HeaderDescription))
		}
		emp, ok := topology.KVKeyOfSubject(topology.BucketView, msg.Header.Get(jetstream.SubjectHeader))
		rev, err := strconv.ParseUint(msg.Header.Get(jetstream.SequenceHeader), 10, 64)
		if !ok || err != nil {
			return nil, errors.New("reading manifests: an answer without its subject or sequence")
		}
		answered[emp] = true
		switch op := msg.Header.Get(topology.HeaderKVOperation); {
		case op == topology.KVOperationDelete || op == topology.KVOperationPurge:
			found[emp] = known{m: &view.Manifest{}, rev: rev}
		case view.IsManifest(msg.Data):
			m, err := view.ParseManifest(msg.Data)
			if err != nil {
				return nil, fmt.Errorf("view %s: %w", emp, err)
			}
			found[emp] = known{m: m, rev: rev}
		}
	}
	return nil, errors.New("reading manifests: more answers than employees asked for")
}

// absentAsEmpty completes a whole answer: employees it does not name have
// no document yet.
func absentAsEmpty(found map[string]known, answered map[string]bool, employees []string) map[string]known {
	for _, e := range employees {
		if !answered[e] {
			found[e] = known{m: &view.Manifest{}}
		}
	}
	return found
}
