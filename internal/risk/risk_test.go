package risk

import (
	"math"
	"slices"
	"testing"
	"time"
)

// TestElasticWorkedExample: the example of Elastic's documentation.
func TestElasticWorkedExample(t *testing.T) {
	if got := Score([]float64{21, 45, 21, 70, 21}); math.Abs(got-36.16) > 0.01 {
		t.Fatalf("Score(70, 45, 21, 21, 21) = %.4f, want 36.16", got)
	}
}

func TestOfCountsIsScoreOfPriorities(t *testing.T) {
	for _, counts := range [][4]int{{0, 0, 0, 0}, {1, 0, 0, 0}, {3, 2, 0, 1}, {0, 0, 0, 50}, {10, 10, 10, 10}} {
		var scores []float64
		for p, n := range counts {
			for range n {
				scores = append(scores, PriorityScores[p])
			}
		}
		if a, b := OfCounts(counts), Score(scores); math.Abs(a-b) > 1e-9 {
			t.Errorf("counts %v: OfCounts %.6f, Score %.6f", counts, a, b)
		}
	}
	if s := OfCounts([4]int{0, 0, 0, 100_000}); s > 100 || s < 98 {
		t.Errorf("100,000 critical incidents score %.2f, want just under 99", s)
	}
}

func TestDecay(t *testing.T) {
	day := 24 * time.Hour
	for _, tt := range []struct {
		age, half time.Duration
		want      float64
	}{
		{0, day, 99}, {day, day, 49.5}, {2 * day, day, 24.75}, {10 * day, 0, 99}, {-day, day, 99},
	} {
		if got := Decay(99, tt.age, tt.half); math.Abs(got-tt.want) > 1e-9 {
			t.Errorf("Decay(99, %s, %s) = %v, want %v", tt.age, tt.half, got, tt.want)
		}
	}
}

func TestLevels(t *testing.T) {
	for score, want := range map[float64]Level{0: Unknown, 19.99: Unknown, 20: Low, 39.9: Low, 40: Moderate, 69.9: Moderate, 70: High, 90: High, 90.01: Critical, 100: Critical} {
		if got := LevelOf(score); got != want {
			t.Errorf("LevelOf(%v) = %s, want %s", score, got, want)
		}
	}
}

func TestRankingTiesByEmployeeID(t *testing.T) {
	r := []Ranked{{Employee: "100", Score: 50}, {Employee: "9", Score: 50}, {Employee: "7", Score: 80}, {Employee: "10", Score: 50}}
	slices.SortFunc(r, Compare)
	var got []string
	for _, x := range r {
		got = append(got, x.Employee)
	}
	if want := []string{"7", "9", "10", "100"}; !slices.Equal(got, want) {
		t.Fatalf("ranking %v, want %v", got, want)
	}
}

func TestOfTimestamps(t *testing.T) {
	now := time.Unix(1_000_000, 0)
	day := 24 * time.Hour
	// A critical a day old and a low just now, half-life one day:
	// 49.5 and 21, ranked 49.5 first.
	got := OfTimestamps([4][]float64{{1_000_000}, nil, nil, {1_000_000 - 86400}}, now, day)
	want := Score([]float64{49.5, 21})
	if math.Abs(got-want) > 1e-9 {
		t.Fatalf("OfTimestamps = %v, want %v", got, want)
	}
	if a, b := OfTimestamps([4][]float64{nil, nil, nil, {1, 2}}, now, 0), OfCounts([4]int{0, 0, 0, 2}); math.Abs(a-b) > 1e-9 {
		t.Errorf("without decay %v, want the score of the counts %v", a, b)
	}
	// Far future incidents do not decay, however far (their nanoseconds
	// overflowed an int64 into a huge age: scored 0); far past ones decay
	// to nothing.
	for _, ts := range []float64{1e300, 253402300799, 1e12} {
		if got, want := OfTimestamps([4][]float64{nil, nil, nil, {ts}}, now, day), OfCounts([4]int{0, 0, 0, 1}); math.Abs(got-want) > 1e-9 {
			t.Errorf("critical at %g: %v, want %v undecayed", ts, got, want)
		}
	}
	for _, ts := range []float64{-1e300, -62135596800} {
		if got := OfTimestamps([4][]float64{nil, nil, nil, {ts}}, now, day); got != 0 {
			t.Errorf("critical at %g: %v, want 0 (ancient)", ts, got)
		}
	}
}
