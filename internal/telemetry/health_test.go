package telemetry

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"testing"
)

// TestReadinessNamesEachComponent: /readyz says which component is not
// ready and reports every other one by name.
func TestReadinessNamesEachComponent(t *testing.T) {
	tests := []struct {
		name   string
		checks map[string]error
		code   int
		body   string
	}{
		{"all ready", map[string]error{"nats": nil, "projector": nil}, 200, "ready\nnats: ok\nprojector: ok\n"},
		{"one stalled", map[string]error{"nats": nil, "projector": errors.New("stalled for 12s")}, 503,
			"not ready: projector: stalled for 12s\nnats: ok\nprojector: stalled for 12s\n"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			h := &Health{}
			for _, name := range []string{"nats", "projector"} {
				err := tc.checks[name]
				h.Add(name, func(context.Context) error { return err })
			}
			srv := httptest.NewServer(http.HandlerFunc(h.Readiness))
			defer srv.Close()
			resp, err := http.Get(srv.URL)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			body, _ := io.ReadAll(resp.Body)
			if resp.StatusCode != tc.code || string(body) != tc.body {
				t.Errorf("got %d %q, want %d %q", resp.StatusCode, body, tc.code, tc.body)
			}
		})
	}
}
