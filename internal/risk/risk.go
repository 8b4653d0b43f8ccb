// Package risk scores employees by their incidents, after Elastic's entity
// risk scoring: each incident scores by its priority (the default
// detection-rule scores), an employee's scores are sorted from the highest
// and summed as Σ sᵢ / i^1.5, normalised by ζ(1.5) so that the score stays
// within 0 to 100.
package risk

import (
	"math"
	"slices"
	"time"
)

// PriorityScores are the scores of an incident by priority index (low,
// medium, high, critical).
var PriorityScores = [4]float64{21, 47, 73, 99}

// zeta is ζ(1.5), the sum of 1/i^1.5 over every i ≥ 1.
const zeta = 2.612375348685488

// Score returns the risk score of incidents scoring scores (in any order).
func Score(scores []float64) float64 {
	sorted := slices.Clone(scores)
	slices.SortFunc(sorted, func(a, b float64) int { return -cmpFloat(a, b) })
	sum := 0.0
	for i, s := range sorted {
		sum += s / math.Pow(float64(i+1), 1.5)
	}
	return sum / zeta
}

// OfCounts returns the risk score of counts[p] incidents of each priority
// p, none decayed.
func OfCounts(counts [4]int) float64 {
	sum, i := 0.0, 1
	for p := 3; p >= 0; p-- {
		for range counts[p] {
			sum += PriorityScores[p] / math.Pow(float64(i), 1.5)
			i++
		}
	}
	return sum / zeta
}

// Decay returns score s of an incident age old, halved per halfLife of age
// (halfLife 0: no decay). A future incident does not decay.
func Decay(s float64, age, halfLife time.Duration) float64 {
	return decaySeconds(s, age.Seconds(), halfLife)
}

// decaySeconds is Decay with the age in seconds, which holds any age a
// timestamp can give (a time.Duration ends at 292 years).
func decaySeconds(s, age float64, halfLife time.Duration) float64 {
	if halfLife <= 0 || !(age > 0) {
		return s
	}
	return s * math.Exp2(-age/halfLife.Seconds())
}

// Level names a score's band.
type Level string

// Levels, from the lowest.
const (
	Unknown  Level = "unknown"  // below 20
	Low      Level = "low"      // 20 to 40
	Moderate Level = "moderate" // 40 to 70
	High     Level = "high"     // 70 to 90
	Critical Level = "critical" // above 90
)

// LevelOf returns the level of score.
func LevelOf(score float64) Level {
	switch {
	case score < 20:
		return Unknown
	case score < 40:
		return Low
	case score < 70:
		return Moderate
	case score <= 90:
		return High
	}
	return Critical
}

// Ranked is an employee's place in a ranking.
type Ranked struct {
	Employee string
	Score    float64
	Counts   [4]int
}

// Compare orders a ranking: the highest score first, ties by employee id
// in numeric order.
func Compare(a, b Ranked) int {
	if c := cmpFloat(b.Score, a.Score); c != 0 {
		return c
	}
	if len(a.Employee) != len(b.Employee) {
		return len(a.Employee) - len(b.Employee)
	}
	switch {
	case a.Employee < b.Employee:
		return -1
	case a.Employee > b.Employee:
		return 1
	}
	return 0
}

func cmpFloat(a, b float64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// OfTimestamps returns the risk score of incidents at timestamps[p] (Unix
// seconds) of each priority p, each score halved per halfLife of age at now.
func OfTimestamps(timestamps [4][]float64, now time.Time, halfLife time.Duration) float64 {
	var scores []float64
	nowSeconds := float64(now.UnixNano()) / 1e9
	for p, list := range timestamps {
		for _, ts := range list {
			// In float seconds: nanoseconds of a timestamp past 2262 or
			// before 1677 overflow an int64.
			scores = append(scores, decaySeconds(PriorityScores[p], nowSeconds-ts, halfLife))
		}
	}
	return Score(scores)
}
