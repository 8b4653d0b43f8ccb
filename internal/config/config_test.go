package config

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestLoad(t *testing.T) {
	secretFile := filepath.Join(t.TempDir(), "pw")
	if err := os.WriteFile(secretFile, []byte("from-file\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	env := map[string]string{
		"POLL_INTERVAL": "2s", "UPSTREAM_URL": "http://up", "UPSTREAM_PASSWORD_FILE": secretFile, "NATS_REPLICAS": "3",
	}
	c, err := Load("x", []string{"-api-addr", "127.0.0.1:1"}, func(k string) string { return env[k] })
	if err != nil {
		t.Fatal(err)
	}
	if c.PollInterval != 2*time.Second || c.UpstreamURL != "http://up" || c.APIAddr != "127.0.0.1:1" ||
		c.UpstreamPassword.Reveal() != "from-file" || c.Topology.Replicas != 3 || c.NATSListen != "127.0.0.1:4222" ||
		c.DataDir != "./data" || c.UpstreamMaxBody != 64<<20 || c.Topology.DuplicateWindow != 2*time.Minute {
		t.Fatalf("config %+v", c)
	}
	// The duplicate window follows a long poll interval.
	env["POLL_INTERVAL"] = "5m"
	if c, err := Load("x", nil, func(k string) string { return env[k] }); err != nil || c.Topology.DuplicateWindow != 15*time.Minute {
		t.Fatalf("POLL_INTERVAL 5m: duplicate window %v, %v", c.Topology.DuplicateWindow, err)
	}
	for _, s := range []string{fmt.Sprint(c), fmt.Sprintf("%+v", c), fmt.Sprintf("%#v", c)} {
		if strings.Contains(s, "from-file") {
			t.Fatalf("secret printed: %s", s)
		}
	}
}

func TestLoadRejects(t *testing.T) {
	for name, env := range map[string]map[string]string{
		"bad duration":          {"POLL_INTERVAL": "soon"},
		"too fast":              {"POLL_INTERVAL": "10ms"},
		"bad replicas":          {"NATS_REPLICAS": "0"},
		"missing file":          {"UPSTREAM_PASSWORD_FILE": "/nonexistent/pw"},
		"tiny body cap":         {"UPSTREAM_MAX_BODY": "10"},
		"no timeout":            {"UPSTREAM_TIMEOUT": "0s"},
		"budget under one body": {"UPSTREAM_MAX_BODY": "67108864", "UPSTREAM_MAX_IN_FLIGHT": "1048576"},
		"sync neither":          {"NATS_SYNC": "sometimes"},
		"sync zero":             {"NATS_SYNC": "0s"},
		"sync negative":         {"NATS_SYNC": "-1m"},
	} {
		t.Run(name, func(t *testing.T) {
			if _, err := Load("x", nil, func(k string) string { return env[k] }); err == nil {
				t.Fatal("accepted")
			}
		})
	}
}

// TestSyncPolicy: JetStream fsyncs every write unless an interval is asked for.
func TestSyncPolicy(t *testing.T) {
	for _, tc := range []struct {
		env  string
		want SyncPolicy
	}{
		{"", SyncPolicy{Always: true}},
		{"always", SyncPolicy{Always: true}},
		{"ALWAYS", SyncPolicy{Always: true}},
		{"2m", SyncPolicy{Interval: 2 * time.Minute}},
		{"10s", SyncPolicy{Interval: 10 * time.Second}},
	} {
		c, err := Load("x", nil, func(k string) string {
			if k == "NATS_SYNC" {
				return tc.env
			}
			return ""
		})
		if err != nil || c.NATSSync != tc.want {
			t.Fatalf("NATS_SYNC=%q: %+v, %v; want %+v", tc.env, c.NATSSync, err, tc.want)
		}
		if back, err := ParseSyncPolicy(c.NATSSync.String()); err != nil || back != tc.want {
			t.Fatalf("NATS_SYNC=%q: %q reads back as %+v, %v", tc.env, c.NATSSync, back, err)
		}
	}
}

// TestAPIAddrDefault: the API listens on every interface by default only
// when it requires a token.
func TestAPIAddrDefault(t *testing.T) {
	for tokens, want := range map[string]string{"": "127.0.0.1:9000", "/etc/tokens": ":9000"} {
		c, err := Load("x", nil, func(k string) string {
			if k == "API_TOKENS_FILE" {
				return tokens
			}
			return ""
		})
		if err != nil || c.APIAddr != want {
			t.Errorf("API_TOKENS_FILE=%q: API_ADDR %q %v, want %q", tokens, c.APIAddr, err, want)
		}
	}
}
