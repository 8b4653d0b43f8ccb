package deploy_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/chromedp/cdproto/network"
	"github.com/chromedp/cdproto/page"
	"github.com/chromedp/chromedp"
	"github.com/nats-io/nats.go"

	"github.com/incidentpipe/pipeline/api"
	"github.com/incidentpipe/pipeline/deploy/pipeline/pipelinetest"
	"github.com/incidentpipe/pipeline/internal/incident"
	"github.com/incidentpipe/pipeline/internal/natsutil"
	"github.com/incidentpipe/pipeline/internal/simulator"
	"github.com/incidentpipe/pipeline/internal/stage"
	"github.com/incidentpipe/pipeline/internal/testkit"
	"github.com/incidentpipe/pipeline/internal/topology"
)

// chromium finds Debian's chromium.
func chromium(t *testing.T) string {
	t.Helper()
	for _, name := range []string{"chromium", "chromium-browser"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	testkit.Require(t, "chromium (apt-get install chromium)")
	return ""
}

// browser starts a headless Chromium (bin) for the test, for at most
// within; it ends with the test.
func browser(t *testing.T, bin string, within time.Duration) context.Context {
	t.Helper()
	opts := append(chromedp.DefaultExecAllocatorOptions[:], chromedp.ExecPath(bin), chromedp.NoSandbox,
		chromedp.UserDataDir(t.TempDir()), chromedp.WindowSize(1280, 900),
		chromedp.Flag("disable-background-networking", true), chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true), chromedp.Flag("disable-quic", true), chromedp.Flag("no-first-run", true))
	alloc, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancelCtx := chromedp.NewContext(alloc)
	ctx, cancel := context.WithTimeout(ctx, within)
	t.Cleanup(func() { cancel(); cancelCtx(); cancelAlloc() })
	if err := chromedp.Do(ctx); err != nil { // start the browser
		t.Fatal(err)
	}
	return ctx
}

// authGet GETs path of the API with the token.
func authGet(t *testing.T, url, token string) (int, []byte) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, url, nil)
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, nil
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, b
}

// TestConsoleInChromium opens the console in a real headless Chromium on
// the capture: refused without a token, the ranking as GET /risk ranks, an
// employee's timeline with their incident count, a new upstream incident
// shown live, and hostile upstream strings shown as text, running nothing.
func TestConsoleInChromium(t *testing.T) {
	bin := chromium(t)
	const token = "console-test-token"
	tokens := filepath.Join(t.TempDir(), "tokens")
	if err := os.WriteFile(tokens, []byte(api.TokenLine(token)+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	sim, hs, _ := pipelinetest.CaptureUpstream(t, simulator.Faults{})
	r := pipelinetest.Start(t, t.TempDir(), hs.URL, map[string]string{"API_TOKENS_FILE": tokens, "POLL_INTERVAL": "200ms"})
	testkit.Eventually(t, 60*time.Second, func() (bool, string) {
		_, b := authGet(t, r.URL+"/status", token)
		var st struct{ Employees int }
		_ = json.Unmarshal(b, &st)
		return st.Employees == 1722, fmt.Sprintf("%d employees", st.Employees)
	})

	ctx := browser(t, bin, 3*time.Minute)

	var dialogs atomic.Int32
	var mu sync.Mutex
	var foreign []string
	go func() {
		for _, err := range chromedp.Events(ctx, page.JavascriptDialogOpening) {
			if err != nil {
				return
			}
			dialogs.Add(1)
			_, _ = chromedp.Call(ctx, page.HandleJavaScriptDialog, page.HandleJavaScriptDialogParams{Accept: false})
		}
	}()
	go func() {
		for ev, err := range chromedp.Events(ctx, network.RequestWillBeSent) {
			if err != nil {
				return
			}
			// Only the console's own files and the API's routes; data: URLs
			// are the browser's own widgets, not requests.
			u := ev.Request.URL
			if strings.HasPrefix(u, "data:") {
				continue
			}
			path, own := strings.CutPrefix(u, r.URL)
			allowed := own && (path == "/" || path == "/favicon.ico" || strings.HasPrefix(path, "/console/") || strings.HasPrefix(path, "/risk") ||
				strings.HasPrefix(path, "/events") || strings.HasPrefix(path, "/status") ||
				strings.HasPrefix(path, "/incidents") || strings.HasPrefix(path, "/unattributed"))
			if !allowed {
				mu.Lock()
				foreign = append(foreign, ev.Request.URL)
				mu.Unlock()
			}
		}
	}()
	shots := os.Getenv("CONSOLE_SCREENSHOTS_DIR")
	if shots == "" {
		shots = t.TempDir()
	}
	shot := func(name string) {
		t.Helper()
		buf, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
		if err == nil {
			err = os.WriteFile(filepath.Join(shots, name), buf, 0o644)
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	do := func(steps ...chromedp.Action[chromedp.Void]) {
		t.Helper()
		if err := chromedp.Do(ctx, steps...); err != nil {
			t.Fatal(err)
		}
	}
	eval := func(expr string) []byte {
		t.Helper()
		v, err := chromedp.Run(ctx, chromedp.Evaluate[[]byte](expr, chromedp.EvalAwaitPromise))
		if err != nil {
			t.Fatalf("%s: %v", expr, err)
		}
		return v
	}
	text := func(sel string) string {
		t.Helper()
		v, err := chromedp.Run(ctx, chromedp.TextContent(chromedp.CSS(sel)))
		if err != nil {
			t.Fatal(err)
		}
		return v
	}

	// Without a token: the login form, and the data refused.
	do(chromedp.Navigate(r.URL+"/"), chromedp.WaitVisible(chromedp.CSS("#login")))
	if status := string(eval(`fetch('/risk').then(r => r.status)`)); status != "401" {
		t.Fatalf("GET /risk from the page without a token: %s", status)
	}
	do(chromedp.SendKeys(chromedp.CSS("#token"), "wrong-token"), chromedp.Click(chromedp.CSS("#login-form button")),
		chromedp.WaitVisible(chromedp.CSS("#login-error")))
	if e := text("#login-error"); !strings.Contains(e, "not accepted") {
		t.Errorf("a wrong token: %q", e)
	}

	// With the token: the ranking, as GET /risk ranks.
	do(chromedp.SetValue(chromedp.CSS("#token"), token), chromedp.Click(chromedp.CSS("#login-form button")),
		chromedp.WaitVisible(chromedp.CSS("#ranking-rows tr")))
	var shown []string
	if err := json.Unmarshal(eval(`[...document.querySelectorAll('#ranking-rows tr')].slice(0, 20).map(tr => tr.dataset.employee)`), &shown); err != nil {
		t.Fatal(err)
	}
	shot("console-ranking.png")
	_, b := authGet(t, r.URL+"/risk?limit=20", token)
	var ranking struct {
		Employees []struct {
			Employee string `json:"employee_id"`
		} `json:"employees"`
	}
	_ = json.Unmarshal(b, &ranking)
	if len(ranking.Employees) != 20 {
		t.Fatalf("GET /risk?limit=20: %s", b)
	}
	for i, e := range ranking.Employees {
		if i >= len(shown) || shown[i] != e.Employee {
			t.Fatalf("the console ranks %v, GET /risk %s", shown, b)
		}
	}

	// An employee's page: a dot on the timeline per incident.
	first := shown[0]
	do(chromedp.Click(chromedp.CSS(`#ranking-rows tr[data-employee="`+first+`"]`)),
		chromedp.WaitVisible(chromedp.CSS("#employee")), chromedp.WaitVisible(chromedp.CSS("#timeline circle")))
	dots := string(eval(`document.querySelectorAll('#timeline circle').length`))
	shot("console-employee.png")
	_, doc := authGet(t, r.URL+"/incidents/"+first, token)
	var d map[string]struct {
		Count int `json:"count"`
	}
	_ = json.Unmarshal(doc, &d)
	if want := d["low"].Count + d["medium"].Count + d["high"].Count + d["critical"].Count; dots != fmt.Sprint(want) || want == 0 {
		t.Errorf("employee %s: %s dots on the timeline, %d incidents", first, dots, want)
	}

	// Search by employee id.
	do(chromedp.Click(chromedp.CSS("#back")), chromedp.WaitVisible(chromedp.CSS("#ranking")),
		chromedp.SetValue(chromedp.CSS("#search-id"), shown[1]), chromedp.Click(chromedp.CSS("#search button")),
		chromedp.WaitVisible(chromedp.CSS("#employee")))
	if title := text("#employee-title"); title != "Employee "+shown[1] {
		t.Errorf("search for %s opened %q", shown[1], title)
	}
	// Filter: only critical incidents; every employee listed has some, and
	// none of another priority.
	do(chromedp.SetValue(chromedp.CSS("#f-priority"), "critical"), chromedp.Click(chromedp.CSS("#filters button[type=submit]")),
		chromedp.WaitVisible(chromedp.CSS("#ranking-rows tr")))
	var titles []string
	testkit.Eventually(t, 10*time.Second, func() (bool, string) {
		_ = json.Unmarshal(eval(`[...document.querySelectorAll('#ranking-rows .bars')].map(b => b.title)`), &titles)
		for _, tt := range titles {
			if !strings.HasPrefix(tt, "low 0, medium 0, high 0, critical ") || strings.HasSuffix(tt, "critical 0") {
				return false, "a filtered row: " + tt
			}
		}
		return len(titles) > 0, "no rows"
	})
	do(chromedp.Click(chromedp.CSS("#f-clear")), chromedp.WaitVisible(chromedp.CSS("#ranking-rows tr")))

	// A new upstream incident, hostile, shown live in the open ranking.
	// Ten critical incidents put the employee at the top of the ranking.
	hostile := []json.RawMessage{json.RawMessage(`{"priority":"critical","employee_id":999999001,"timestamp":1700000000.5,` +
		`"note":"<img src=x onerror=alert(1)>","html":"<script>alert(2)</script>","link":"javascript:alert(3)"}`)}
	for i := range 9 {
		hostile = append(hostile, json.RawMessage(fmt.Sprintf(`{"priority":"critical","employee_id":999999001,"timestamp":%d}`, 1700000001+i)))
	}
	sim.AppendIncidents(incident.Misuse, hostile...)
	testkit.Eventually(t, 30*time.Second, func() (bool, string) {
		code, _ := authGet(t, r.URL+"/incidents/999999001", token)
		return code == http.StatusOK, "the API does not show the new incident yet"
	})
	served := time.Now()
	do(chromedp.WaitVisible(chromedp.CSS(`#ranking-rows tr[data-employee="999999001"]`)))
	if d := time.Since(served); d > 2*time.Second {
		t.Errorf("the open page showed the new incident %s after the API did", d)
	}
	do(chromedp.Click(chromedp.CSS(`#ranking-rows tr[data-employee="999999001"]`)),
		chromedp.WaitVisible(chromedp.CSS("#incident-rows tr")))
	shown999 := text("#incident-rows")
	for _, s := range []string{"<img src=x onerror=alert(1)>", "<script>alert(2)</script>", "javascript:alert(3)"} {
		if !strings.Contains(shown999, s) {
			t.Errorf("the hostile value %q is not shown as text:\n%s", s, shown999)
		}
	}
	if n := string(eval(`document.querySelectorAll('#employee img, #employee script, #employee a').length`)); n != "0" || dialogs.Load() != 0 {
		t.Errorf("hostile data became markup: %s elements, %d dialogs", n, dialogs.Load())
	}
	do(chromedp.Click(chromedp.CSS("#tab-unattributed")), chromedp.WaitVisible(chromedp.CSS("#unattributed")))
	shot("console-unattributed.png")
	mu.Lock()
	defer mu.Unlock()
	if len(foreign) > 0 {
		t.Errorf("the page requested what it should not: %v", foreign)
	}
}

// TestConsoleFirstPageAt100kEmployees: with 100,000 employees in the view,
// the console's first page of the ranking renders in Chromium in under 2 s.
func TestConsoleFirstPageAt100kEmployees(t *testing.T) {
	if testing.Short() {
		t.Skip("-short: 100,000 employees")
	}
	bin := chromium(t)
	r := pipelinetest.Start(t, t.TempDir(), "http://127.0.0.1:1", map[string]string{"POLL_INTERVAL": "1h"})
	ctx0, cancel0 := context.WithTimeout(context.Background(), 20*time.Second)
	nc, js, err := natsutil.Connect(ctx0, natsutil.ConnectOptions{URL: r.NATS, Name: t.Name()})
	cancel0()
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	const n = 100_000
	msgs := make([]*nats.Msg, n)
	for i := range n {
		emp := 100000 + i
		doc := fmt.Sprintf(`{"low":{"count":1,"incidents":[{"type":"misuse","priority":"low","employee_id":%d,"timestamp":%d}]},`+
			`"medium":{"count":0,"incidents":[]},"high":{"count":0,"incidents":[]},"critical":{"count":0,"incidents":[]}}`, emp, i)
		msgs[i] = &nats.Msg{Subject: "$KV." + topology.BucketView + "." + fmt.Sprint(emp), Data: []byte(doc)}
	}
	pctx, pcancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer pcancel()
	if _, err := stage.PublishAll(pctx, js, msgs); err != nil {
		t.Fatal(err)
	}
	testkit.Eventually(t, 2*time.Minute, func() (bool, string) {
		_, b := authGet(t, r.URL+"/status", "")
		var st struct{ Employees int }
		_ = json.Unmarshal(b, &st)
		return st.Employees == n, fmt.Sprintf("%d employees served", st.Employees)
	})
	ctx := browser(t, bin, time.Minute) // started first: not part of the page's time
	start := time.Now()
	if err := chromedp.Do(ctx, chromedp.Navigate(r.URL+"/"), chromedp.WaitVisible(chromedp.CSS("#ranking-rows tr"))); err != nil {
		t.Fatal(err)
	}
	took := time.Since(start)
	t.Logf("first page of 100,000 employees rendered in %s", took)
	if took > 2*time.Second {
		t.Errorf("the first page took %s, want under 2 s", took)
	}
}
