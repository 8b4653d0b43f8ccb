package lazyfs_test

import (
	"bytes"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"

	"github.com/incidentpipe/pipeline/deploy/faults/lazyfs"
	"github.com/incidentpipe/pipeline/internal/testkit"
)

// mount mounts f on a new directory for the test.
func mount(t *testing.T, f *lazyfs.FS) string {
	t.Helper()
	if err := lazyfs.Available(); err != nil {
		testkit.Require(t, "FUSE ("+err.Error()+")")
	}
	dir := t.TempDir()
	if err := f.Mount(dir); err != nil {
		testkit.Require(t, "a FUSE mount ("+err.Error()+")")
	}
	t.Cleanup(func() {
		if err := f.Unmount(); err != nil {
			t.Error(err)
		}
	})
	return dir
}

// remount cuts nothing more: it takes the file system off and back on, as
// a machine's restart does after a power loss.
func remount(t *testing.T, f *lazyfs.FS, dir string) {
	t.Helper()
	if err := f.Unmount(); err != nil {
		t.Fatal(err)
	}
	if err := f.Mount(dir); err != nil {
		t.Fatal(err)
	}
}

// model is what the test expects of the file system: each file's current
// and synced bytes.
type model struct {
	cur, synced map[string][]byte
}

func (m *model) sync(name string) { m.synced[name] = slices.Clone(m.cur[name]) }

var names = []string{"a", "b", "c", "d/e", "d/f", "meta.inf", "meta.inf.tmp"}

// step does one random operation through the mount and in the model.
func step(t *testing.T, rng *rand.Rand, dir string, m *model, mode lazyfs.Mode) {
	t.Helper()
	name := names[rng.IntN(len(names))]
	path := filepath.Join(dir, name)
	_, exists := m.cur[name]
	switch op := rng.IntN(10); {
	case op < 4: // write at an offset, through O_SYNC one time in five
		off := 0
		if exists && len(m.cur[name]) > 0 {
			off = rng.IntN(len(m.cur[name]) + 1)
		}
		data := make([]byte, 1+rng.IntN(3000))
		for i := range data {
			data[i] = byte(rng.Uint32())
		}
		flags := os.O_RDWR | os.O_CREATE
		osync := rng.IntN(5) == 0
		if osync {
			flags |= os.O_SYNC
		}
		fd, err := os.OpenFile(path, flags, 0o644)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := fd.WriteAt(data, int64(off)); err != nil {
			t.Fatal(err)
		}
		if err := fd.Close(); err != nil {
			t.Fatal(err)
		}
		cur := m.cur[name]
		if end := off + len(data); end > len(cur) {
			cur = append(cur, make([]byte, end-len(cur))...)
		}
		copy(cur[off:], data)
		m.cur[name] = cur
		if !exists {
			m.synced[name] = nil
		}
		if osync {
			m.sync(name)
		}
	case op < 5 && exists: // truncate, shorter or longer
		size := rng.IntN(len(m.cur[name]) + 2000)
		if err := os.Truncate(path, int64(size)); err != nil {
			t.Fatal(err)
		}
		cur := m.cur[name]
		if size <= len(cur) {
			cur = cur[:size]
		} else {
			cur = append(cur, make([]byte, size-len(cur))...)
		}
		m.cur[name] = cur
	case op < 7 && exists: // fsync
		fd, err := os.OpenFile(path, os.O_RDWR, 0)
		if err != nil {
			t.Fatal(err)
		}
		if err := fd.Sync(); err != nil {
			t.Fatal(err)
		}
		_ = fd.Close()
		m.sync(name)
	case op < 9 && exists: // rename, over another file or not
		to := names[rng.IntN(len(names))]
		if to == name {
			return
		}
		if err := os.Rename(path, filepath.Join(dir, to)); err != nil {
			t.Fatal(err)
		}
		if _, over := m.cur[to]; over && mode == lazyfs.RenameKeepsData {
			m.sync(name)
		}
		m.cur[to], m.synced[to] = m.cur[name], m.synced[name]
		delete(m.cur, name)
		delete(m.synced, name)
	case exists: // unlink
		if err := os.Remove(path); err != nil {
			t.Fatal(err)
		}
		delete(m.cur, name)
		delete(m.synced, name)
	}
}

// check compares every file under dir with want (or, per file, with one of
// the alternatives) and the set of names with the model's.
func check(t *testing.T, dir string, want map[string][]byte, or map[string][]byte, when string) {
	t.Helper()
	var found []string
	err := filepath.WalkDir(dir, func(path string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		name, _ := filepath.Rel(dir, path)
		found = append(found, name)
		got, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		if !bytes.Equal(got, want[name]) && (or == nil || !bytes.Equal(got, or[name])) {
			t.Fatalf("%s: %s holds %d bytes, want %d", when, name, len(got), len(want[name]))
		}
		return nil
	})
	if err != nil {
		t.Fatalf("%s: %v", when, err)
	}
	var expected []string
	for name := range want {
		expected = append(expected, name)
	}
	slices.Sort(found)
	slices.Sort(expected)
	if !slices.Equal(found, expected) {
		t.Fatalf("%s: files %v, want %v", when, found, expected)
	}
}

// TestAgainstModel runs random writes, truncates, renames, unlinks and
// fsyncs through the mount, checks every read against a model, cuts the
// power and checks that what survives is what each mode promises.
func TestAgainstModel(t *testing.T) {
	for _, mode := range []lazyfs.Mode{lazyfs.DropUnsynced, lazyfs.RenameKeepsData, lazyfs.RandomWriteBack} {
		t.Run(mode.String(), func(t *testing.T) {
			f := lazyfs.New(lazyfs.Options{Mode: mode, Seed: 7})
			dir := mount(t, f)
			if err := os.Mkdir(filepath.Join(dir, "d"), 0o755); err != nil {
				t.Fatal(err)
			}
			m := &model{cur: map[string][]byte{}, synced: map[string][]byte{}}
			rng := rand.New(rand.NewPCG(uint64(mode), 99))
			lost := 0
			for cycle := range 12 {
				for range 150 {
					step(t, rng, dir, m, mode)
				}
				check(t, dir, m.cur, nil, fmt.Sprintf("cycle %d before the cut", cycle))
				f.PowerCut()
				if _, err := os.ReadFile(filepath.Join(dir, "a")); err == nil || !errors.Is(err, syscall.EIO) && !os.IsNotExist(err) {
					t.Fatalf("cycle %d: read after the power cut: %v, want EIO", cycle, err)
				}
				remount(t, f, dir)
				if mode == lazyfs.RandomWriteBack {
					check(t, dir, m.synced, m.cur, fmt.Sprintf("cycle %d after the cut", cycle))
					// The model now follows what the file system kept.
					for name := range m.cur {
						got, _ := os.ReadFile(filepath.Join(dir, name))
						if !bytes.Equal(got, m.cur[name]) {
							lost++
						}
						m.cur[name], m.synced[name] = got, slices.Clone(got)
					}
				} else {
					check(t, dir, m.synced, nil, fmt.Sprintf("cycle %d after the cut", cycle))
				}
				for name := range m.cur {
					if !bytes.Equal(m.cur[name], m.synced[name]) {
						lost++
					}
					m.cur[name] = slices.Clone(m.synced[name])
				}
			}
			if lost == 0 {
				t.Fatal("no cycle had unsynced data to lose: the test tried nothing")
			}
			if f.Dirty() != 0 {
				t.Fatalf("%d files dirty right after a remount", f.Dirty())
			}
		})
	}
}

// TestTriggerCutsAtANamedOperation: a metadata file written to a temporary
// name and renamed over the old one, as JetStream writes meta.inf without
// fsync: the power cut at the rename leaves the old file whole, and with
// the rename done and no sync (drop-unsynced) an empty one.
func TestTriggerCutsAtANamedOperation(t *testing.T) {
	for _, tc := range []struct {
		name    string
		trigger func(lazyfs.Op) bool
		want    string
	}{
		{"cut at the rename", func(op lazyfs.Op) bool { return op.Kind == "rename" && strings.HasSuffix(op.To, "meta.inf") }, "old"},
		{"cut after the rename", func(op lazyfs.Op) bool { return op.Kind == "write" && strings.HasSuffix(op.Path, "other") }, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var armed atomic.Bool
			f := lazyfs.New(lazyfs.Options{Mode: lazyfs.DropUnsynced, Trigger: func(op lazyfs.Op) bool { return armed.Load() && tc.trigger(op) }})
			dir := mount(t, f)
			meta := filepath.Join(dir, "meta.inf")
			fd, err := os.OpenFile(meta, os.O_CREATE|os.O_RDWR|os.O_SYNC, 0o644)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := fd.WriteString("old"); err != nil {
				t.Fatal(err)
			}
			_ = fd.Close()
			armed.Store(true)
			if err := os.WriteFile(meta+".tmp", []byte("new"), 0o644); err != nil {
				t.Fatal(err)
			}
			renameErr := os.Rename(meta+".tmp", meta)
			writeErr := os.WriteFile(filepath.Join(dir, "other"), []byte("x"), 0o644)
			select {
			case <-f.Cut():
			default:
				t.Fatalf("the trigger did not cut the power (rename: %v, write: %v)", renameErr, writeErr)
			}
			remount(t, f, dir)
			got, err := os.ReadFile(meta)
			if err != nil || string(got) != tc.want {
				t.Fatalf("meta.inf after the cut: %q, %v; want %q", got, err, tc.want)
			}
		})
	}
}
