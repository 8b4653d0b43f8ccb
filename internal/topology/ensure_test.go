package topology_test

import (
	"context"
	"io/fs"
	"path/filepath"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/incidentpipe/pipeline/internal/testkit"
	"github.com/incidentpipe/pipeline/internal/topology"
)

// metaFiles maps every file of the JetStream store that describes a stream,
// bucket or consumer (not their messages) to its modification time.
func metaFiles(t *testing.T, dir string) map[string]time.Time {
	t.Helper()
	files := map[string]time.Time{}
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		if name := d.Name(); name == "meta.inf" || name == "meta.sum" || name == "o.dat" {
			info, err := d.Info()
			if err != nil {
				return err
			}
			files[path] = info.ModTime()
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return files
}

// TestEnsureLeavesUnchangedTopologyAlone: every stage ensures the topology
// at start; when nothing changed, nothing on disk may be rewritten (a
// rewrite cut by a power loss leaves an empty meta.inf), and a real change
// is still applied.
func TestEnsureLeavesUnchangedTopologyAlone(t *testing.T) {
	dir := t.TempDir()
	s := testkit.JetStreamAt(t, dir)
	_, js := testkit.Connect(t, s)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	ensureAll := func(o topology.Options) {
		t.Helper()
		if err := topology.Ensure(ctx, js, o); err != nil {
			t.Fatal(err)
		}
		for stream, cfg := range map[string]jetstream.ConsumerConfig{
			topology.StreamRaw: topology.EnricherConsumer(), topology.StreamEnriched: topology.ProjectorConsumer(),
		} {
			if _, err := topology.EnsureConsumer(ctx, js, stream, cfg); err != nil {
				t.Fatal(err)
			}
		}
	}
	o := topology.DefaultOptions()
	ensureAll(o)
	before := metaFiles(t, dir)
	if len(before) < 5 {
		t.Fatalf("found %d metadata files, want those of 3 streams, 2 buckets and 2 consumers", len(before))
	}
	// Modification times are coarse on some file systems: wait past a tick.
	time.Sleep(20 * time.Millisecond)
	ensureAll(o)
	for path, mtime := range metaFiles(t, dir) {
		if !mtime.Equal(before[path]) {
			t.Errorf("%s rewritten by an Ensure that changed nothing", path)
		}
	}

	// A change that keeps more is applied, and replicas are never lowered
	// by it.
	o.DLQMaxAge = 60 * 24 * time.Hour
	ensureAll(o)
	info, err := js.Stream(ctx, topology.StreamDLQ)
	if err != nil {
		t.Fatal(err)
	}
	if got := info.CachedInfo().Config.MaxAge; got != o.DLQMaxAge {
		t.Fatalf("DLQ max age %v after Ensure with %v", got, o.DLQMaxAge)
	}
	c := topology.ProjectorConsumer()
	c.MaxAckPending = 100
	cons, err := topology.EnsureConsumer(ctx, js, topology.StreamEnriched, c)
	if err != nil || cons.CachedInfo().Config.MaxAckPending != 100 {
		t.Fatalf("consumer change not applied: %v", err)
	}
}

// TestEnsureAllowsAtomicBatches: the streams the stages write in batches
// take them, whether Ensure creates them or finds them made before batches
// existed (a bucket's own configuration cannot say so).
func TestEnsureAllowsAtomicBatches(t *testing.T) {
	want := []string{topology.StreamRaw, topology.StreamEnriched,
		topology.KVStream(topology.BucketView), topology.KVStream(topology.BucketIdentities)}
	for _, existing := range []bool{false, true} {
		ctx := context.Background()
		_, js := testkit.Connect(t, testkit.JetStream(t)) // ensures once
		if existing {
			for _, name := range want {
				s, err := js.Stream(ctx, name)
				if err != nil {
					t.Fatal(err)
				}
				cfg := s.CachedInfo().Config
				cfg.AllowAtomicPublish = false
				if _, err := js.UpdateStream(ctx, cfg); err != nil {
					t.Fatal(err)
				}
			}
			if err := topology.Ensure(ctx, js, topology.DefaultOptions()); err != nil {
				t.Fatal(err)
			}
		}
		for _, name := range want {
			s, err := js.Stream(ctx, name)
			if err != nil {
				t.Fatal(err)
			}
			if !s.CachedInfo().Config.AllowAtomicPublish {
				t.Errorf("existing %v: %s does not allow atomic batches", existing, name)
			}
		}
	}
}

// TestEnsureNeverKeepsLess: started with settings that would keep less (a
// command run without the deployment's settings, a shorter retention),
// Ensure leaves the streams keeping what they kept; settings that keep
// more apply.
func TestEnsureNeverKeepsLess(t *testing.T) {
	ctx := context.Background()
	_, js := testkit.Connect(t, testkit.JetStream(t)) // the defaults: raw and enriched for ever, the DLQ 30 days
	config := func(name string) jetstream.StreamConfig {
		s, err := js.Stream(ctx, name)
		if err != nil {
			t.Fatal(err)
		}
		return s.CachedInfo().Config
	}
	less := topology.DefaultOptions()
	less.RawMaxAge, less.EnrichedMaxAge, less.DLQMaxAge = time.Hour, time.Hour, 2*time.Hour
	less.RawMaxBytes, less.EnrichedMaxBytes = 1<<20, 1<<20
	if err := topology.Ensure(ctx, js, less); err != nil {
		t.Fatal(err)
	}
	for name, want := range map[string]time.Duration{topology.StreamRaw: 0, topology.StreamEnriched: 0, topology.StreamDLQ: 30 * 24 * time.Hour} {
		if c := config(name); c.MaxAge != want || c.MaxBytes != -1 {
			t.Errorf("%s after an Ensure keeping less: max age %s, max bytes %d; want %s, no cap", name, c.MaxAge, c.MaxBytes, want)
		}
	}
	// An operator shortened the enriched stream by hand; settings that keep
	// more than that apply.
	c := config(topology.StreamEnriched)
	c.MaxAge, c.MaxBytes = time.Hour, 1<<20
	if _, err := js.UpdateStream(ctx, c); err != nil {
		t.Fatal(err)
	}
	more := topology.DefaultOptions()
	more.EnrichedMaxAge, more.EnrichedMaxBytes = 96*time.Hour, 0
	if err := topology.Ensure(ctx, js, more); err != nil {
		t.Fatal(err)
	}
	if c := config(topology.StreamEnriched); c.MaxAge != 96*time.Hour || c.MaxBytes != -1 {
		t.Errorf("keeping more: max age %s, max bytes %d; want 96h, no cap", c.MaxAge, c.MaxBytes)
	}
}
