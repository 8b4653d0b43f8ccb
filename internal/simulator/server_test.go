package simulator

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/incidentpipe/pipeline/internal/incident"
)

// get reads the results of GET url with the test's credentials.
func get(t *testing.T, url string) []json.RawMessage {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, url, nil)
	req.SetBasicAuth("u", "p")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var page struct{ Results []json.RawMessage }
	if err := json.NewDecoder(resp.Body).Decode(&page); err != nil {
		t.Fatal(err)
	}
	return page.Results
}

// TestWindowListsRecentIncidentsOnly: with a window, an incident is listed
// for that long after it was added and never again, paged or not.
func TestWindowListsRecentIncidentsOnly(t *testing.T) {
	for _, pageSize := range []int{0, 1} {
		s := NewServer("u", "p", Faults{Window: 400 * time.Millisecond, PageSize: pageSize}, 1)
		hs := httptest.NewServer(s)
		url := hs.URL + "/incidents/denial/"
		old := json.RawMessage(`{"employee_id":1,"priority":"low","timestamp":1}`)
		s.AppendIncidents(incident.Denial, old)
		if got := get(t, url); len(got) != 1 {
			t.Fatalf("page size %d: %d listed right after adding one", pageSize, len(got))
		}
		deadline := time.Now().Add(5 * time.Second)
		for len(s.Listed(incident.Denial)) != 0 {
			if time.Now().After(deadline) {
				t.Fatalf("page size %d: still listed 5s after a 400ms window", pageSize)
			}
			time.Sleep(20 * time.Millisecond)
		}
		fresh := json.RawMessage(`{"employee_id":2,"priority":"low","timestamp":2}`)
		s.AppendIncidents(incident.Denial, fresh)
		got := get(t, url)
		if len(got) != 1 || string(got[0]) != string(fresh) {
			t.Fatalf("page size %d: listed %s, want only the fresh incident", pageSize, got)
		}
		hs.Close()
	}
}

// TestNoWindowListsEverything: without a window nothing ever leaves.
func TestNoWindowListsEverything(t *testing.T) {
	s := NewServer("u", "p", Faults{}, 1)
	hs := httptest.NewServer(s)
	defer hs.Close()
	for i := range 3 {
		s.AppendIncidents(incident.Probing, json.RawMessage(`{"employee_id":`+string(rune('1'+i))+`,"priority":"low","timestamp":1}`))
	}
	if got := get(t, hs.URL+"/incidents/probing/"); len(got) != 3 {
		t.Fatalf("%d listed, want 3", len(got))
	}
}
