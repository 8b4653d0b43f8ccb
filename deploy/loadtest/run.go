package main

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/incidentpipe/pipeline/internal/incident"
	"github.com/incidentpipe/pipeline/internal/simulator"
)

type options struct {
	incidents, employees int
	poll                 time.Duration
	fresh                int
	apiDuration          time.Duration
	connections          int
	standalone           string
	noWrk                bool
	timeout              time.Duration
}

// loadResult is one API load run.
type loadResult struct {
	rps      float64
	p50, p99 time.Duration
	errors   int
}

type report struct {
	o                      options
	docBytes, gzBytes      int
	ingest                 time.Duration
	freshP50, freshP99     time.Duration
	full, fullGz           loadResult
	refFull, refFullGz     loadResult
	one                    loadResult
	oneBusyP99, oneIdleP99 time.Duration
	peakRSS                int64 // bytes
	tool                   string
	// jsRate is JetStream's async publish rate on this machine, measured
	// in the same run; rebuild is how long `rebuild` takes on the view.
	jsRate  float64
	rebuild time.Duration
}

func run(ctx context.Context, o options, logw io.Writer) (*report, error) {
	logf := func(format string, args ...any) { fmt.Fprintf(logw, "loadtest: "+format+"\n", args...) }
	rep := &report{o: o}

	// The reference: what JetStream takes here, on a quiet machine.
	jsRate, err := jetStreamAsyncRate(ctx, max(50_000, min(o.incidents, 300_000)))
	if err != nil {
		return nil, err
	}
	rep.jsRate = jsRate
	logf("JetStream takes %.0f async publishes/s here", jsRate)

	// The upstream: generated data behind the simulator.
	data := newDataset(o.employees, 1)
	sim := simulator.NewServer("load", "load-password", simulator.Faults{}, 1)
	data.fill(sim, o.incidents)
	up := httptest.NewServer(sim)
	defer up.Close()
	logf("upstream serves %d incidents over %d employees", o.incidents, o.employees)

	bin := o.standalone
	if bin == "" {
		var err error
		if bin, err = buildStandalone(ctx); err != nil {
			return nil, err
		}
	}
	apiAddr, natsAddr := freeAddr(), freeAddr()
	dir, err := os.MkdirTemp("", "loadtest")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	cmd := exec.CommandContext(ctx, bin)
	cmd.Env = append(os.Environ(), "UPSTREAM_URL="+up.URL, "UPSTREAM_USER=load", "UPSTREAM_PASSWORD=load-password",
		"POLL_INTERVAL="+o.poll.String(), "DATA_DIR="+dir, "API_ADDR="+apiAddr, "NATS_LISTEN="+natsAddr, "LOG_LEVEL=warn")
	var logs bytes.Buffer
	cmd.Stdout, cmd.Stderr = &logs, &logs
	start := time.Now()
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	defer func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }()
	api := "http://" + apiAddr
	one := fmt.Sprintf("%s/incidents/%d", api, data.employees[0])

	// Ingest, with a light load on one employee meanwhile (200 requests/s).
	busyCtx, stopBusy := context.WithCancel(ctx)
	busy := make(chan loadResult, 1)
	go func() { busy <- paced(busyCtx, one, 200, time.Hour) }()
	if err := waitIncidents(ctx, api, o.incidents, logf); err != nil {
		stopBusy()
		return nil, fmt.Errorf("%w\n%s", err, tail(logs.String()))
	}
	rep.ingest = time.Since(start)
	stopBusy()
	rep.oneBusyP99 = (<-busy).p99
	logf("ingested %d incidents in %s (%.0f/s)", o.incidents, rep.ingest.Round(time.Millisecond), float64(o.incidents)/rep.ingest.Seconds())
	rep.oneIdleP99 = paced(ctx, one, 200, 5*time.Second).p99

	// Freshness: incidents added one at a time, each at a random moment of
	// the poll cycle, until each is served.
	var fresh []time.Duration
	for k := range o.fresh {
		time.Sleep(time.Duration(rand.Int64N(int64(o.poll))))
		e := k % len(data.employees)
		raw, ts := data.next(incident.Misuse, e)
		url := fmt.Sprintf("%s/incidents/%d", api, data.employees[e])
		added := time.Now()
		sim.AppendIncidents(incident.Misuse, raw)
		for {
			if ctx.Err() != nil {
				return nil, ctx.Err()
			}
			if _, body, _ := fetch(url, nil); bytes.Contains(body, []byte(ts)) {
				break
			}
			if time.Since(added) > time.Minute {
				return nil, fmt.Errorf("incident %s not visible after a minute", ts)
			}
			time.Sleep(5 * time.Millisecond)
		}
		fresh = append(fresh, time.Since(added))
	}
	rep.freshP50, rep.freshP99 = percentile(fresh, 0.50), percentile(fresh, 0.99)
	logf("freshness p50 %s p99 %s", rep.freshP50, rep.freshP99)

	// API load, beside a plain server holding the same bytes.
	if err := waitIncidents(ctx, api, o.incidents+o.fresh, nil); err != nil {
		return nil, err
	}
	_, doc, err := fetch(api+"/incidents", nil)
	if err != nil {
		return nil, err
	}
	rep.docBytes = len(doc)
	var gz bytes.Buffer
	zw, _ := gzip.NewWriterLevel(&gz, gzip.BestSpeed)
	_, _ = zw.Write(doc)
	_ = zw.Close()
	rep.gzBytes = gz.Len()
	ref := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		if strings.Contains(r.Header.Get("Accept-Encoding"), "gzip") {
			w.Header().Set("Content-Encoding", "gzip")
			_, _ = w.Write(gz.Bytes())
			return
		}
		_, _ = w.Write(doc)
	}))
	defer ref.Close()
	gzHeader := map[string]string{"Accept-Encoding": "gzip"}
	measure := func(url string, h map[string]string) loadResult {
		if path, err := exec.LookPath("wrk"); err == nil && !o.noWrk {
			rep.tool = "wrk -t2 -c" + strconv.Itoa(o.connections)
			if r, err := wrkLoad(ctx, path, url, h, o.connections, o.apiDuration); err == nil {
				return r
			}
		}
		rep.tool = "Go client, " + strconv.Itoa(o.connections) + " connections"
		return goLoad(ctx, url, h, o.connections, o.apiDuration)
	}
	rep.refFull = measure(ref.URL, nil)
	rep.full = measure(api+"/incidents", nil)
	rep.refFullGz = measure(ref.URL, gzHeader)
	rep.fullGz = measure(api+"/incidents", gzHeader)
	rep.one = measure(one, nil)
	rep.peakRSS = peakRSS(cmd.Process.Pid)

	// Rebuild: the operator's command against the running standalone,
	// until the view holds every incident again.
	start = time.Now()
	rb := exec.CommandContext(ctx, bin, "rebuild")
	rb.Env = cmd.Env
	if out, err := rb.CombinedOutput(); err != nil {
		return nil, fmt.Errorf("rebuild: %w\n%s", err, tail(string(out)))
	}
	if err := waitIncidents(ctx, api, o.incidents+o.fresh, nil); err != nil {
		return nil, fmt.Errorf("after the rebuild: %w", err)
	}
	rep.rebuild = time.Since(start)
	logf("rebuilt the view in %s", rep.rebuild.Round(time.Millisecond))
	return rep, nil
}

// waitIncidents waits until the view holds n incidents; with logf, it logs
// each stage's progress every few seconds, which shows the bottleneck.
func waitIncidents(ctx context.Context, api string, n int, logf func(string, ...any)) error {
	start, last := time.Now(), time.Now()
	for {
		_, body, err := fetch(api+"/metrics", nil)
		if err == nil && metricSum(body, "incidents_view_incidents") >= float64(n) {
			return nil
		}
		if logf != nil && time.Since(last) > 3*time.Second {
			last = time.Now()
			logf("%5.1fs published %.0f, enriched %.0f, projected %.0f, in view %.0f", time.Since(start).Seconds(),
				metricSum(body, "incidents_published_total"), metricSum(body, "incidents_enriched_total"),
				metricSum(body, `incidents_projected_total{outcome="added"}`), metricSum(body, "incidents_view_incidents"))
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("waiting for %d incidents in the view: %w", n, ctx.Err())
		case <-time.After(100 * time.Millisecond):
		}
	}
}

var client = &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 256, DisableCompression: true}, Timeout: 30 * time.Second}

func fetch(url string, h map[string]string) (int, []byte, error) {
	req, err := http.NewRequest(http.MethodGet, url, nil)
	if err != nil {
		return 0, nil, err
	}
	for k, v := range h {
		req.Header.Set(k, v)
	}
	resp, err := client.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, b, err
}

// goLoad runs conns closed-loop clients on url until d passes or ctx ends.
func goLoad(ctx context.Context, url string, h map[string]string, conns int, d time.Duration) loadResult {
	ctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	var mu sync.Mutex
	var lat []time.Duration
	errs := 0
	start := time.Now()
	var wg sync.WaitGroup
	for range conns {
		wg.Go(func() {
			for ctx.Err() == nil {
				t := time.Now()
				code, _, err := fetch(url, h)
				el := time.Since(t)
				mu.Lock()
				if err != nil || code != http.StatusOK {
					errs++
				} else {
					lat = append(lat, el)
				}
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	return loadResult{rps: float64(len(lat)) / time.Since(start).Seconds(), p50: percentile(lat, 0.5), p99: percentile(lat, 0.99), errors: errs}
}

// paced sends rate requests a second to url (open loop) until d passes or
// ctx ends.
func paced(ctx context.Context, url string, rate int, d time.Duration) loadResult {
	ctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	tick := time.NewTicker(time.Second / time.Duration(rate))
	defer tick.Stop()
	var mu sync.Mutex
	var lat []time.Duration
	var wg sync.WaitGroup
	for {
		select {
		case <-ctx.Done():
			wg.Wait()
			return loadResult{p50: percentile(lat, 0.5), p99: percentile(lat, 0.99)}
		case <-tick.C:
			wg.Go(func() {
				t := time.Now()
				if code, _, err := fetch(url, nil); err == nil && code == http.StatusOK {
					mu.Lock()
					lat = append(lat, time.Since(t))
					mu.Unlock()
				}
			})
		}
	}
}

// wrkLoad runs wrk -t2 -cN --latency and reads its summary.
func wrkLoad(ctx context.Context, wrk, url string, h map[string]string, conns int, d time.Duration) (loadResult, error) {
	args := []string{"-t2", "-c" + strconv.Itoa(conns), "-d" + strconv.Itoa(int(d.Seconds())) + "s", "--latency"}
	for k, v := range h {
		args = append(args, "-H", k+": "+v)
	}
	out, err := exec.CommandContext(ctx, wrk, append(args, url)...).Output()
	if err != nil {
		return loadResult{}, err
	}
	var r loadResult
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		switch {
		case len(f) == 2 && f[0] == "Requests/sec:":
			r.rps, _ = strconv.ParseFloat(f[1], 64)
		case len(f) == 2 && f[0] == "50%":
			r.p50 = parseWrkDuration(f[1])
		case len(f) == 2 && f[0] == "99%":
			r.p99 = parseWrkDuration(f[1])
		case len(f) >= 4 && f[0] == "Non-2xx":
			r.errors, _ = strconv.Atoi(f[len(f)-1])
		}
	}
	if r.rps == 0 {
		return r, errors.New("no wrk summary")
	}
	return r, nil
}

func parseWrkDuration(s string) time.Duration {
	for _, unit := range []struct {
		suffix string
		scale  time.Duration
	}{{"us", time.Microsecond}, {"ms", time.Millisecond}, {"s", time.Second}, {"m", time.Minute}} {
		if v, ok := strings.CutSuffix(s, unit.suffix); ok {
			f, _ := strconv.ParseFloat(v, 64)
			return time.Duration(f * float64(unit.scale))
		}
	}
	return 0
}

func percentile(d []time.Duration, p float64) time.Duration {
	if len(d) == 0 {
		return 0
	}
	s := slices.Clone(d)
	slices.Sort(s)
	return s[min(len(s)-1, int(p*float64(len(s))))]
}

// metricSum sums the samples of a family, or of one series given with its
// labels (name{label="value"}).
func metricSum(exposition []byte, name string) float64 {
	var sum float64
	for _, line := range strings.Split(string(exposition), "\n") {
		if strings.HasPrefix(line, name+"{") || strings.HasPrefix(line, name+" ") || strings.HasSuffix(name, "}") && strings.HasPrefix(line, name) {
			v, _ := strconv.ParseFloat(line[strings.LastIndexByte(line, ' ')+1:], 64)
			sum += v
		}
	}
	return sum
}

// peakRSS reads the process's peak resident set (VmHWM).
func peakRSS(pid int) int64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			kb, _ := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			return kb << 10
		}
	}
	return 0
}

// buildStandalone builds ./deploy/standalone from the workspace root.
func buildStandalone(ctx context.Context) (string, error) {
	root, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(root, "go.work")); err == nil {
			break
		}
		parent := filepath.Dir(root)
		if parent == root {
			return "", errors.New("run it inside the repository (go.work not found)")
		}
		root = parent
	}
	dir, err := os.MkdirTemp("", "loadtest-bin")
	if err != nil {
		return "", err
	}
	bin := filepath.Join(dir, "standalone")
	cmd := exec.CommandContext(ctx, "go", "build", "-o", bin, "./deploy/standalone")
	cmd.Dir = root
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("building the standalone: %v\n%s", err, out)
	}
	return bin, nil
}

func freeAddr() string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		panic(err)
	}
	defer l.Close()
	return l.Addr().String()
}

func tail(s string) string {
	if len(s) > 3000 {
		return s[len(s)-3000:]
	}
	return s
}

// Markdown renders the report as a table.
func (r *report) Markdown() string {
	var b strings.Builder
	ms := func(d time.Duration) string { return fmt.Sprintf("%.2f ms", float64(d)/float64(time.Millisecond)) }
	ratio := func(a, b float64) string {
		if b == 0 {
			return "n/a"
		}
		return fmt.Sprintf("%.2fx", a/b)
	}
	fmt.Fprintf(&b, "| %d incidents / %d employees | value | reference / target |\n| --- | --- | --- |\n", r.o.incidents, r.o.employees)
	fmt.Fprintf(&b, "| full document | %d bytes (%d gzip) | |\n", r.docBytes, r.gzBytes)
	ingestRate := float64(r.o.incidents) / r.ingest.Seconds()
	fmt.Fprintf(&b, "| ingest, start to settled view (POLL_INTERVAL %s) | %s, **%.0f incidents/s** = %s JetStream's async publish rate (%.0f/s) | ≥ 0.2x |\n",
		r.o.poll, r.ingest.Round(time.Millisecond), ingestRate, ratio(ingestRate, r.jsRate), r.jsRate)
	fmt.Fprintf(&b, "| freshness, upstream → GET /incidents/{id} | p50 %s, **p99 %s** | p99 < 1 s |\n", ms(r.freshP50), ms(r.freshP99))
	fmt.Fprintf(&b, "| GET /incidents | **%.0f req/s**, p50 %s, p99 %s | static server %.0f req/s, p99 %s: %s of its req/s |\n",
		r.full.rps, ms(r.full.p50), ms(r.full.p99), r.refFull.rps, ms(r.refFull.p99), ratio(r.full.rps, r.refFull.rps))
	fmt.Fprintf(&b, "| GET /incidents, gzip | **%.0f req/s**, p50 %s, p99 %s | static server %.0f req/s, p99 %s: %s of its req/s |\n",
		r.fullGz.rps, ms(r.fullGz.p50), ms(r.fullGz.p99), r.refFullGz.rps, ms(r.refFullGz.p99), ratio(r.fullGz.rps, r.refFullGz.rps))
	fmt.Fprintf(&b, "| GET /incidents/{id} | **%.0f req/s**, p50 %s, p99 %s | |\n", r.one.rps, ms(r.one.p50), ms(r.one.p99))
	fmt.Fprintf(&b, "| GET /incidents/{id} p99 at 200 req/s, while ingesting / idle | %s / %s = %s | ≤ max(2x idle, idle + 5 ms) = %s |\n",
		ms(r.oneBusyP99), ms(r.oneIdleP99), ratio(float64(r.oneBusyP99), float64(r.oneIdleP99)), ms(max(2*r.oneIdleP99, r.oneIdleP99+5*time.Millisecond)))
	limit := 64<<20 + 3*int64(r.docBytes)
	fmt.Fprintf(&b, "| peak RSS of the standalone | **%.0f MiB** = %s the full document | ≤ 64 MiB + 3x the document = %.0f MiB |\n",
		float64(r.peakRSS)/(1<<20), ratio(float64(r.peakRSS), float64(r.docBytes)), float64(limit)/(1<<20))
	fmt.Fprintf(&b, "| rebuild of the view from the streams (`standalone rebuild`) | **%s** | ≤ 60 s |\n", r.rebuild.Round(time.Millisecond))
	fmt.Fprintf(&b, "\nAPI load: %s, %s per run; errors: %d.\n", r.tool, r.o.apiDuration, r.full.errors+r.fullGz.errors+r.one.errors)
	return b.String()
}
