// Package bench holds the raw JetStream work-queue baseline that `fleet bench`
// compares the fleet against, plus measurement helpers shared by both halves.
//
// The package depends only on the standard library, nats.go and nats-server.
package bench

import (
	"slices"
	"time"
)

// Latency summarises a set of latency samples.
type Latency struct {
	P50, P99, Max time.Duration
	N             int
}

// Summarize returns exact nearest-rank percentiles of samples. The input slice
// is not modified. An empty input yields the zero Latency.
func Summarize(samples []time.Duration) Latency {
	n := len(samples)
	if n == 0 {
		return Latency{}
	}
	s := slices.Clone(samples)
	slices.Sort(s)
	return Latency{
		P50: s[rankIndex(n, 50)],
		P99: s[rankIndex(n, 99)],
		Max: s[n-1],
		N:   n,
	}
}

// rankIndex is the zero-based index of the pct-th percentile of n sorted
// samples under the nearest-rank definition: ceil(pct/100 * n) - 1.
func rankIndex(n, pct int) int {
	i := (pct*n+99)/100 - 1
	if i < 0 {
		i = 0
	}
	if i > n-1 {
		i = n - 1
	}
	return i
}

// DrainResult is the outcome of a drain measurement: Jobs messages already
// stored were processed by Workers concurrent workers in Elapsed.
type DrainResult struct {
	Jobs    int
	Workers int
	Elapsed time.Duration
	PerSec  float64
	CPU     time.Duration // the process's CPU time during the drain (see cpuPerJob)
}

// cpuPerJob is cpu ÷ jobs, 0 when either is unknown. A drain's CPU time is
// the whole process's — the embedded broker, every client, coordinator and
// factories alike — over the drain, so it is the cost of the path per job:
// on a shared machine it moves much less than the rate does.
func cpuPerJob(cpu time.Duration, jobs int) time.Duration {
	if cpu <= 0 || jobs <= 0 {
		return 0
	}
	return cpu / time.Duration(jobs)
}

// SteadyResult is the outcome of a steady-rate measurement.
type SteadyResult struct {
	Offered   float64       // measured offered rate, jobs/s (Sent / Duration)
	Duration  time.Duration // measured length of the publishing window
	Sent      int           // messages published (and acked by the stream)
	Done      int           // distinct messages handled and DoubleAck'ed
	RunStart  Latency       // publish -> handler start
	Completed Latency       // publish -> DoubleAck returned
}
