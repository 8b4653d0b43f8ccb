package api

import (
	"bufio"
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

// TestHubDropsAStalledClient: a client that does not read falls behind
// and is dropped; the others receive every change, and publishing never
// waits for anyone.
func TestHubDropsAStalledClient(t *testing.T) {
	h := newHub(100, 8)
	h.start(0)
	stalled, _, _, _ := h.subscribe(0, false)
	live, _, _, _ := h.subscribe(0, false)
	got := make(chan uint64, 100)
	go func() {
		for c := range live.ch {
			got <- c.Version
		}
	}()
	done := make(chan struct{})
	go func() {
		for v := uint64(1); v <= 50; v++ {
			h.publish(change{Version: v})
			time.Sleep(time.Millisecond) // the live client keeps up
		}
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("publishing waited for a stalled client")
	}
	select {
	case <-stalled.dropped:
	default:
		t.Fatal("the stalled client was not dropped")
	}
	for v := uint64(1); v <= 50; v++ {
		select {
		case g := <-got:
			if g != v {
				t.Fatalf("live client got %d, want %d", g, v)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("live client missed change %d", v)
		}
	}
	// Resuming: from a kept version, the missed changes; from before the
	// kept window, a reset.
	_, missed, reset, _ := h.subscribe(47, true)
	if reset || len(missed) != 3 || missed[0].Version != 48 {
		t.Errorf("resume from 47: %d missed, reset %v", len(missed), reset)
	}
	small := newHub(5, 8)
	small.start(0)
	for v := uint64(1); v <= 20; v++ {
		small.publish(change{Version: v})
	}
	if _, _, reset, _ := small.subscribe(3, true); !reset {
		t.Error("resume from a version no longer kept: no reset")
	}
	if _, missed, reset, _ := small.subscribe(20, true); reset || len(missed) != 0 {
		t.Error("resume from the current version: not quiet")
	}
}

// readEvents reads SSE events ("name id") from an /events stream until n
// change events arrived or the deadline.
func readEvents(t *testing.T, url, lastID string, n int, onOpen func()) []string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if lastID != "" {
		req.Header.Set("Last-Event-ID", lastID)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if ct := resp.Header.Get("Content-Type"); resp.StatusCode != 200 || ct != "text/event-stream" {
		t.Fatalf("GET /events: %d %s", resp.StatusCode, ct)
	}
	if onOpen != nil {
		onOpen()
	}
	var events []string
	var name, id string
	changes := 0
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		line := sc.Text()
		switch {
		case strings.HasPrefix(line, "event: "):
			name = strings.TrimPrefix(line, "event: ")
		case strings.HasPrefix(line, "id: "):
			id = strings.TrimPrefix(line, "id: ")
		case line == "" && name != "":
			events = append(events, name+" "+id)
			if name == "change" {
				changes++
			}
			if changes >= n || name == "reset" {
				return events
			}
			name, id = "", ""
		}
	}
	return events
}

// TestEventsResumeLosesNothing: a client that disconnects and comes back
// with Last-Event-ID gets every change it missed, in order.
func TestEventsResumeLosesNothing(t *testing.T) {
	hs, kv, _ := serveAPI(t, Options{})
	ctx := context.Background()
	first := readEvents(t, hs.URL+"/events", "", 1, func() {
		if _, err := kv.PutString(ctx, "7", docOf(7, [4]int{1, 0, 0, 0})); err != nil {
			t.Error(err)
		}
	})
	if len(first) != 1 || !strings.HasPrefix(first[0], "change ") {
		t.Fatalf("first stream: %v", first)
	}
	lastID := strings.TrimPrefix(first[0], "change ")
	// Changes while the client is away.
	for i, emp := range []int{8, 9, 10} {
		if _, err := kv.PutString(ctx, fmt.Sprint(emp), docOf(emp, [4]int{0, i + 1, 0, 0})); err != nil {
			t.Fatal(err)
		}
		// One snapshot each (the store coalesces changes that come at once).
		want := fmt.Sprint(emp)
		deadline := time.Now().Add(10 * time.Second)
		for {
			resp, _ := do(t, http.MethodGet, hs.URL+"/incidents/"+want, "")
			if resp.StatusCode == 200 || time.Now().After(deadline) {
				break
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	resumed := readEvents(t, hs.URL+"/events", lastID, 3, nil)
	if len(resumed) != 3 {
		t.Fatalf("after resuming from %s: %v, want the 3 changes missed", lastID, resumed)
	}
	prev := lastID
	for _, e := range resumed {
		id := strings.TrimPrefix(e, "change ")
		if !strings.HasPrefix(e, "change ") || len(id) < len(prev) || (len(id) == len(prev) && id <= prev) {
			t.Fatalf("events %v after %s: not the changes in order", resumed, lastID)
		}
		prev = id
	}
	// An id that was never given (or is no longer kept) resets.
	if ev := readEvents(t, hs.URL+"/events", "not-a-version", 1, nil); len(ev) != 1 || !strings.HasPrefix(ev[0], "reset") {
		t.Errorf("bad Last-Event-ID: %v, want a reset", ev)
	}
}

// TestEventsOutliveServerTimeouts: a stream lasts past the server's read
// and write timeouts (which end ordinary requests).
func TestEventsOutliveServerTimeouts(t *testing.T) {
	_, kv, a := serveAPI(t, Options{})
	srv := httptest.NewUnstartedServer(a.Handler())
	srv.Config.ReadTimeout, srv.Config.WriteTimeout = 300*time.Millisecond, 300*time.Millisecond
	srv.Start()
	t.Cleanup(srv.Close)
	events := readEvents(t, srv.URL+"/events", "", 1, func() {
		time.Sleep(time.Second) // past both timeouts
		if _, err := kv.PutString(context.Background(), "7", docOf(7, [4]int{1, 0, 0, 0})); err != nil {
			t.Error(err)
		}
	})
	if len(events) != 1 || !strings.HasPrefix(events[0], "change ") {
		t.Fatalf("after the server's timeouts: %v, want a change", events)
	}
}
