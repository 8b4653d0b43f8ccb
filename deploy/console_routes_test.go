package deploy_test

import (
	"context"
	"encoding/json"
	"fmt"
	"math"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/incidentpipe/pipeline/api"
	"github.com/incidentpipe/pipeline/internal/testkit"
	"github.com/incidentpipe/pipeline/internal/topology"
)

// viewDoc is an employee's document in the whole-document layout.
func viewDoc(critical, low []string) string {
	list := func(items []string) string {
		return fmt.Sprintf(`{"count":%d,"incidents":[%s]}`, len(items), strings.Join(items, ","))
	}
	return `{"low":` + list(low) + `,"medium":` + list(nil) + `,"high":` + list(nil) + `,"critical":` + list(critical) + `}`
}

// TestConsoleShowsEveryFieldAndHasRoutes: in Chromium, the console shows
// every field of an incident whatever its name (__proto__ included),
// control and bidirectional characters made visible, an employee's score
// as GET /risk ranks it with decay, and every view at its own fragment URL
// (bookmarkable, Back and Forward work); a walk whose ranking is gone says
// it starts over; no page sends a Referer.
func TestConsoleShowsEveryFieldAndHasRoutes(t *testing.T) {
	bin := chromium(t)
	_, js := testkit.Connect(t, testkit.JetStream(t))
	ctx0 := context.Background()
	kv, err := js.KeyValue(ctx0, topology.BucketView)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now().Unix()
	inc := func(emp int, priority string, age int64, extra string) string {
		return fmt.Sprintf(`{"type":"misuse","priority":%q,"employee_id":%d,"timestamp":%d%s}`, priority, emp, now-age, extra)
	}
	docs := map[string]string{
		"77": viewDoc([]string{inc(77, "critical", 7200, `,"__proto__":{"polluted":true},"constructor":"c","note":"abc\u202egnp.exe","bell":"a\u200bb"`)},
			[]string{inc(77, "low", 60, "")}),
		"88": viewDoc(nil, []string{inc(88, "low", 30, ""), inc(88, "low", 90, "")}),
		"99": viewDoc([]string{inc(99, "critical", 30*86400, "")}, nil),
	}
	for k, v := range docs {
		if _, err := kv.PutString(ctx0, k, v); err != nil {
			t.Fatal(err)
		}
	}
	a, err := api.New(api.Options{JS: js, RiskHalfLife: 24 * time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	runCtx, stop := context.WithCancel(ctx0)
	t.Cleanup(stop)
	go func() { _ = a.Run(runCtx) }()
	hs := httptest.NewServer(a.Handler())
	t.Cleanup(hs.Close)
	testkit.Eventually(t, 10*time.Second, func() (bool, string) {
		code, b := authGet(t, hs.URL+"/status", "")
		return code == http.StatusOK && strings.Contains(string(b), `"employees":3`), string(b)
	})
	for _, path := range []string{"/", "/risk", "/incidents/77"} {
		resp, err := http.Get(hs.URL + path)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if p := resp.Header.Get("Referrer-Policy"); p != "no-referrer" {
			t.Errorf("GET %s: Referrer-Policy %q, want no-referrer", path, p)
		}
	}

	ctx := browser(t, bin, 2*time.Minute)
	do := func(steps ...chromedp.Action[chromedp.Void]) {
		t.Helper()
		if err := chromedp.Do(ctx, steps...); err != nil {
			t.Fatal(err)
		}
	}
	eval := func(expr string) string {
		t.Helper()
		v, err := chromedp.Run(ctx, chromedp.Evaluate[[]byte](expr, chromedp.EvalAwaitPromise))
		if err != nil {
			t.Fatalf("%s: %v", expr, err)
		}
		var s string
		if json.Unmarshal(v, &s) != nil {
			s = string(v)
		}
		return s
	}
	waitFor := func(what, expr string) {
		t.Helper()
		testkit.Eventually(t, 10*time.Second, func() (bool, string) { return eval(expr) == "true", what })
	}

	// Opened at an employee's URL: every field, the hidden characters shown.
	do(chromedp.Navigate(hs.URL+"/#/employees/77"), chromedp.WaitVisible(chromedp.CSS("#incident-rows tr")))
	fields := eval(`document.querySelector('#incident-rows').textContent`)
	for _, want := range []string{`"__proto__": {"polluted":true}`, `"constructor": "c"`, `abc⟨U+202E⟩gnp.exe`, `a⟨U+200B⟩b`} {
		if !strings.Contains(fields, want) {
			t.Errorf("the incident's fields do not show %q:\n%s", want, fields)
		}
	}
	if strings.ContainsAny(eval(`document.body.textContent`), "\u202e\u200b") {
		t.Error("a bidirectional or invisible character is shown raw")
	}
	if eval(`String(({}).polluted)`) != "undefined" {
		t.Error("a field named __proto__ reached Object.prototype")
	}

	// The same score as /risk, decay included, and the explanation adds up to it.
	_, b := authGet(t, hs.URL+"/risk/77", "")
	var rk struct {
		Score float64 `json:"score"`
		Rank  int     `json:"rank"`
	}
	if err := json.Unmarshal(b, &rk); err != nil || rk.Score <= 0 {
		t.Fatalf("GET /risk/77: %s", b)
	}
	_, b = authGet(t, hs.URL+"/risk", "")
	if !strings.Contains(string(b), fmt.Sprintf(`"employee_id":"77","score":%s`, strconv.FormatFloat(rk.Score, 'f', -1, 64))) {
		t.Errorf("/risk/77 says %v; /risk: %s", rk.Score, b)
	}
	summary := eval(`document.querySelector('#employee-summary').textContent`)
	if !strings.Contains(summary, fmt.Sprintf("risk score %.2f", rk.Score)) {
		t.Errorf("the employee page says %q; /risk scores 77 at %.2f", summary, rk.Score)
	}
	var terms []float64
	_ = json.Unmarshal([]byte(eval(`JSON.stringify([...document.querySelectorAll('#explain-rows tr td:nth-child(3)')].map(td => Number(td.textContent)))`)), &terms)
	sum := 0.0
	for _, x := range terms {
		sum += x
	}
	if math.Abs(sum-rk.Score) > 0.02*float64(len(terms)) {
		t.Errorf("the explanation's contributions %v add up to %.2f, the score is %.2f", terms, sum, rk.Score)
	}

	// Every view has its URL; Back and Forward move between them.
	do(chromedp.Click(chromedp.CSS("#tab-ranking")), chromedp.WaitVisible(chromedp.CSS("#ranking-rows tr")))
	if h := eval(`location.hash`); h != "#/ranking" {
		t.Errorf("the ranking's URL: %q", h)
	}
	do(chromedp.Click(chromedp.CSS("#tab-unattributed")), chromedp.WaitVisible(chromedp.CSS("#unattributed")))
	if h := eval(`location.hash`); h != "#/unattributed" {
		t.Errorf("the unattributed list's URL: %q", h)
	}
	eval(`history.back()`)
	waitFor("Back shows the ranking", `!document.querySelector('#ranking').hidden && location.hash === '#/ranking'`)
	eval(`history.back()`)
	waitFor("Back again shows employee 77", `!document.querySelector('#employee').hidden && document.querySelector('#employee-title').textContent === 'Employee 77'`)
	eval(`history.forward()`)
	waitFor("Forward shows the ranking", `!document.querySelector('#ranking').hidden`)

	// A filtered ranking at its URL: the filter shown and applied.
	do(chromedp.Navigate(hs.URL+"/#/ranking?priority=critical"), chromedp.WaitVisible(chromedp.CSS("#ranking-rows tr")))
	waitFor("the filtered ranking lists 77 and 99 only",
		`[...document.querySelectorAll('#ranking-rows tr')].map(tr => tr.dataset.employee).sort().join() === '77,99' && document.querySelector('#f-priority').value === 'critical'`)
	do(chromedp.Click(chromedp.CSS(`#ranking-rows tr[data-employee="99"]`)), chromedp.WaitVisible(chromedp.CSS("#employee")))
	if h := eval(`location.hash`); h != "#/employees/99" {
		t.Errorf("an employee's URL: %q", h)
	}

	// A walk whose ranking is no longer kept says it starts over.
	do(chromedp.Navigate(hs.URL+"/#/ranking"), chromedp.WaitVisible(chromedp.CSS("#ranking-rows tr")))
	eval(`cursor = '1_1_5'; loadRanking(false).then(() => true)`)
	waitFor("the notice", `!document.querySelector('#ranking-notice').hidden && document.querySelector('#ranking-notice').textContent.includes('starts again from the top')`)
	if n := eval(`String(document.querySelectorAll('#ranking-rows tr').length)`); n != "3" {
		t.Errorf("after starting over the ranking shows %s rows, want 3", n)
	}
}
