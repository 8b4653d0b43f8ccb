// Package prometheus_test checks the Prometheus configuration in this
// directory and the pipeline's metrics with the real promtool and Prometheus.
package prometheus_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/incidentpipe/pipeline/deploy/pipeline/pipelinetest"
	"github.com/incidentpipe/pipeline/internal/simulator"
	"github.com/incidentpipe/pipeline/internal/testkit"
)

// tool returns the path of a Prometheus program (Debian package prometheus).
func tool(t *testing.T, name string) string {
	t.Helper()
	path, err := exec.LookPath(name)
	if err != nil {
		testkit.Require(t, name+" (apt-get install prometheus)")
	}
	return path
}

// TestPromtoolChecksTheDeployFiles: the configuration and rules are valid,
// and the rules' unit tests (rules_test.yml) pass: the stall alerts fire
// within 60 s of a stall and stay silent through a 100k ingest.
func TestPromtoolChecksTheDeployFiles(t *testing.T) {
	promtool := tool(t, "promtool")
	for _, args := range [][]string{{"check", "config", "prometheus.yml"}, {"check", "rules", "rules.yml"}, {"test", "rules", "rules_test.yml"}} {
		out, err := exec.Command(promtool, args...).CombinedOutput()
		if err != nil {
			t.Errorf("promtool %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
}

// metricsIn returns the metric names an expression file mentions.
func metricsIn(t *testing.T, exprs []string) []string {
	t.Helper()
	name := regexp.MustCompile(`\b(incidents_[a-z_]+|http_request_duration_seconds[a-z_]*)\b`)
	seen := map[string]bool{}
	for _, e := range exprs {
		for _, m := range name.FindAllString(e, -1) {
			seen[m] = true
		}
	}
	var out []string
	for m := range seen {
		out = append(out, m)
	}
	sort.Strings(out)
	if len(out) == 0 {
		t.Fatal("no metric names found")
	}
	return out
}

// ruleExprs reads the expressions of rules.yml (a line-based read: every
// rule's expr is on one line).
func ruleExprs(t *testing.T) []string {
	t.Helper()
	b, err := os.ReadFile("rules.yml")
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, line := range strings.Split(string(b), "\n") {
		if e, ok := strings.CutPrefix(strings.TrimSpace(line), "expr:"); ok {
			out = append(out, e)
		}
	}
	return out
}

func dashboardExprs(t *testing.T) []string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("..", "grafana", "dashboards", "incidents.json"))
	if err != nil {
		t.Fatal(err)
	}
	var d struct {
		Panels []struct {
			Title   string
			Targets []struct{ Expr string }
		}
	}
	if err := json.Unmarshal(b, &d); err != nil {
		t.Fatalf("dashboard JSON: %v", err)
	}
	var out []string
	for _, p := range d.Panels {
		if len(p.Targets) == 0 {
			t.Errorf("panel %q has no query", p.Title)
		}
		for _, tg := range p.Targets {
			out = append(out, tg.Expr)
		}
	}
	return out
}

// exposed returns the metric family names of a text exposition, with the
// sample names of histograms (_bucket, _sum, _count).
func exposed(exposition []byte) map[string]bool {
	names := map[string]bool{}
	for _, line := range strings.Split(string(exposition), "\n") {
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		if i := strings.IndexAny(line, "{ "); i > 0 {
			names[line[:i]] = true
		}
	}
	return names
}

// TestStandaloneObservability runs the standalone on the capture and checks
// its metrics: lint-clean for promtool, every metric the alert rules and the
// dashboard use is exposed, values agree with what happened, health answers,
// and a real Prometheus scrapes it.
func TestStandaloneObservability(t *testing.T) {
	promtool := tool(t, "promtool")
	prometheus := tool(t, "prometheus")
	_, hs, expected := pipelinetest.CaptureUpstream(t, simulator.Faults{PageSize: 100})
	r := pipelinetest.Start(t, t.TempDir(), hs.URL, nil)
	pipelinetest.WaitExact(t, r.URL, expected, 60*time.Second)

	for _, path := range []string{"/healthz", "/readyz"} {
		if code, body, err := pipelinetest.Get(r.URL + path); code != http.StatusOK {
			t.Errorf("GET %s = %d %s %v", path, code, body, err)
		}
	}
	// A request for one employee: its route, never its path, is the label.
	if code, _, err := pipelinetest.Get(r.URL + "/incidents/325375"); code != http.StatusOK {
		t.Fatalf("GET /incidents/325375 = %d %v", code, err)
	}
	_, metrics, err := pipelinetest.Get(r.URL + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	lint := exec.Command(promtool, "check", "metrics")
	lint.Stdin = bytes.NewReader(metrics)
	if out, err := lint.CombinedOutput(); err != nil {
		t.Errorf("promtool check metrics: %v\n%s", err, out)
	}
	names := exposed(metrics)
	for _, m := range metricsIn(t, append(ruleExprs(t), dashboardExprs(t)...)) {
		if !names[m] {
			t.Errorf("%s is used by rules.yml or the dashboard but not exposed", m)
		}
	}
	for _, family := range []string{"go_goroutines", "process_resident_memory_bytes", "incidents_upstream_requests_total",
		"incidents_upstream_request_duration_seconds_bucket", "http_request_duration_seconds_bucket"} {
		if !names[family] {
			t.Errorf("%s not exposed", family)
		}
	}
	if !strings.Contains(string(metrics), `route="/incidents/{employee_id}"`) || strings.Contains(string(metrics), `325375"`) {
		t.Error("http_request_duration_seconds must be labelled by chi route pattern")
	}
	for name, want := range map[string]float64{"incidents_published_total": 2100, "incidents_view_incidents": 2100, "incidents_view_employees": 1722} {
		if got := pipelinetest.SumMetric(t, metrics, name); got != want {
			t.Errorf("%s = %v, want %v", name, got, want)
		}
	}

	// A real Prometheus scrapes the standalone.
	prom := startPrometheus(t, prometheus, strings.TrimPrefix(r.URL, "http://"), false)
	testkit.Eventually(t, 60*time.Second, func() (bool, string) {
		up, ok1 := prom.value(`up{job="standalone"}`)
		n, ok2 := prom.value(`sum(incidents_view_incidents)`)
		return ok1 && ok2 && up == 1 && n == 2100, fmt.Sprintf("up=%v (%v) incidents=%v (%v)\n%s", up, ok1, n, ok2, tail(prom.log.String()))
	})
}

// runningPrometheus is a real Prometheus scraping one target every second.
type runningPrometheus struct {
	addr string
	log  *pipelinetest.SyncBuffer
}

// startPrometheus runs bin scraping target (host:port) as job standalone
// every second; with rules, it evaluates rules.yml every second too.
func startPrometheus(t *testing.T, bin, target string, rules bool) *runningPrometheus {
	t.Helper()
	dir := t.TempDir()
	cfg := fmt.Sprintf("global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: standalone\n    static_configs:\n      - targets: [%q]\n", target)
	if rules {
		b, err := os.ReadFile("rules.yml")
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, "rules.yml"), b, 0o600); err != nil {
			t.Fatal(err)
		}
		cfg += "rule_files:\n  - rules.yml\n"
	}
	if err := os.WriteFile(filepath.Join(dir, "prometheus.yml"), []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	p := &runningPrometheus{addr: testkit.FreeAddr(t), log: &pipelinetest.SyncBuffer{}}
	cmd := exec.Command(bin, "--config.file="+filepath.Join(dir, "prometheus.yml"),
		"--storage.tsdb.path="+filepath.Join(dir, "data"), "--web.listen-address="+p.addr)
	cmd.Stdout, cmd.Stderr = p.log, p.log
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	return p
}

// results runs an instant query and returns each series' labels and value.
func (p *runningPrometheus) results(q string) ([]map[string]string, []float64, bool) {
	resp, err := http.Get("http://" + p.addr + "/api/v1/query?query=" + url.QueryEscape(q))
	if err != nil {
		return nil, nil, false
	}
	defer resp.Body.Close()
	var res struct {
		Status string
		Data   struct {
			Result []struct {
				Metric map[string]string `json:"metric"`
				Value  []any             `json:"value"`
			} `json:"result"`
		} `json:"data"`
	}
	if json.NewDecoder(resp.Body).Decode(&res) != nil || res.Status != "success" {
		return nil, nil, false
	}
	var labels []map[string]string
	var values []float64
	for _, r := range res.Data.Result {
		if len(r.Value) != 2 {
			return nil, nil, false
		}
		s, _ := r.Value[1].(string)
		v, err := strconv.ParseFloat(s, 64)
		if err != nil {
			return nil, nil, false
		}
		labels, values = append(labels, r.Metric), append(values, v)
	}
	return labels, values, true
}

// value runs an instant query that must give one series.
func (p *runningPrometheus) value(q string) (float64, bool) {
	_, v, ok := p.results(q)
	if !ok || len(v) != 1 {
		return 0, false
	}
	return v[0], true
}

func tail(s string) string {
	if len(s) > 2000 {
		return s[len(s)-2000:]
	}
	return s
}
