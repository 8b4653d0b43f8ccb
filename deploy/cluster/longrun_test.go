package cluster_test

import (
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// cycles is how many times each cluster fault runs: CLUSTER_FAULT_CYCLES,
// default 1 (CI's short run). The long run sets it:
//
//	CLUSTER_FAULT_CYCLES=5 go test -v -timeout 0 -run 'TestCluster|TestNodeCutOff' ./deploy/cluster/
func cycles(t *testing.T) int {
	s := os.Getenv("CLUSTER_FAULT_CYCLES")
	if s == "" {
		return 1
	}
	n, err := strconv.Atoi(s)
	if err != nil || n < 1 {
		t.Fatalf("CLUSTER_FAULT_CYCLES=%q: want a positive number", s)
	}
	return n
}

// cycleName names a subtest for its fault and, in a long run, its cycle.
func cycleName(fault string, cycle, of int) string {
	if of == 1 {
		return fault
	}
	return fmt.Sprintf("%s/cycle %d", fault, cycle+1)
}

// faultTable gathers one row per fault kind over a run's cycles and logs
// the run's summary as a table when the test ends.
type faultTable struct {
	mu    sync.Mutex
	order []string
	rows  map[string]*faultRow
}

type faultRow struct {
	cycles, failed               int
	shownMax, exactMax, afterMax time.Duration
	shownSum, exactSum, afterSum time.Duration
}

func newFaultTable(t *testing.T) *faultTable {
	ft := &faultTable{rows: map[string]*faultRow{}}
	t.Cleanup(func() { t.Log("\n" + ft.String()) })
	return ft
}

// add records one cycle of fault: whether it failed, how long an incident
// listed during it took to be shown, how long after the heal the view was
// exact (or whole again, after a power loss), and how long an incident
// listed after the heal took to be shown (0: not measured).
func (ft *faultTable) add(fault string, failed bool, shown, exact, after time.Duration) {
	ft.mu.Lock()
	defer ft.mu.Unlock()
	r := ft.rows[fault]
	if r == nil {
		r = &faultRow{}
		ft.rows[fault] = r
		ft.order = append(ft.order, fault)
	}
	r.cycles++
	if failed {
		r.failed++
	}
	r.shownMax, r.exactMax, r.afterMax = max(r.shownMax, shown), max(r.exactMax, exact), max(r.afterMax, after)
	r.shownSum, r.exactSum, r.afterSum = r.shownSum+shown, r.exactSum+exact, r.afterSum+after
}

func (ft *faultTable) String() string {
	ft.mu.Lock()
	defer ft.mu.Unlock()
	var b strings.Builder
	b.WriteString("| fault | cycles | failed a check (lost, duplicated, too slow) | an incident listed during the fault, shown after (mean / max) | the view exact (whole) after the heal (mean / max) | an incident listed after the heal, shown after (mean / max) |\n| --- | --- | --- | --- | --- | --- |\n")
	total, failed := 0, 0
	for _, f := range slices.Clone(ft.order) {
		r := ft.rows[f]
		total, failed = total+r.cycles, failed+r.failed
		mean := func(sum time.Duration) time.Duration {
			return (sum / time.Duration(r.cycles)).Round(100 * time.Millisecond)
		}
		fmt.Fprintf(&b, "| %s | %d | %d | %s / %s | %s / %s | %s / %s |\n", f, r.cycles, r.failed,
			mean(r.shownSum), r.shownMax.Round(100*time.Millisecond), mean(r.exactSum), r.exactMax.Round(100*time.Millisecond),
			mean(r.afterSum), r.afterMax.Round(100*time.Millisecond))
	}
	fmt.Fprintf(&b, "| all | %d | %d | | | |\n", total, failed)
	return b.String()
}
