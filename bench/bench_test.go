package bench

import (
	"context"
	"os"
	"strconv"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// startServer runs an embedded JetStream server for the test and returns its
// client URL. syncAlways makes the file store sync every write.
func startServer(tb testing.TB, syncAlways bool) string {
	tb.Helper()
	opts := &server.Options{
		Host:      "127.0.0.1",
		Port:      -1,
		JetStream: true,
		StoreDir:  tb.TempDir(),
		NoSigs:    true,
		NoLog:     true,
	}
	if syncAlways {
		opts.SyncAlways = true
		opts.SyncInterval = 2 * time.Minute
	}
	s, err := server.NewServer(opts)
	if err != nil {
		tb.Fatalf("new server: %v", err)
	}
	go s.Start()
	if !s.ReadyForConnections(10 * time.Second) {
		s.Shutdown()
		tb.Fatal("server not ready")
	}
	tb.Cleanup(func() {
		s.Shutdown()
		s.WaitForShutdown()
	})
	return s.ClientURL()
}

func checkLatency(t *testing.T, name string, l Latency, n int) {
	t.Helper()
	if l.N != n {
		t.Errorf("%s: N = %d, want %d", name, l.N, n)
	}
	if l.P50 <= 0 || l.P99 <= 0 || l.Max <= 0 {
		t.Errorf("%s: non-positive latency %+v", name, l)
	}
	if l.P50 > l.P99 || l.P99 > l.Max {
		t.Errorf("%s: percentiles out of order %+v", name, l)
	}
}

func TestSummarize(t *testing.T) {
	ms := func(v ...int) []time.Duration {
		out := make([]time.Duration, len(v))
		for i, x := range v {
			out[i] = time.Duration(x) * time.Millisecond
		}
		return out
	}
	seq := func(n int) []time.Duration { // n..1 ms, reversed to exercise sorting
		out := make([]time.Duration, n)
		for i := range out {
			out[i] = time.Duration(n-i) * time.Millisecond
		}
		return out
	}
	tests := []struct {
		name string
		in   []time.Duration
		want Latency
	}{
		{"empty", nil, Latency{}},
		{"one", ms(7), Latency{P50: 7 * time.Millisecond, P99: 7 * time.Millisecond, Max: 7 * time.Millisecond, N: 1}},
		{"two", ms(9, 1), Latency{P50: 1 * time.Millisecond, P99: 9 * time.Millisecond, Max: 9 * time.Millisecond, N: 2}},
		{"four", ms(4, 3, 2, 1), Latency{P50: 2 * time.Millisecond, P99: 4 * time.Millisecond, Max: 4 * time.Millisecond, N: 4}},
		{"odd", ms(5, 1, 3), Latency{P50: 3 * time.Millisecond, P99: 5 * time.Millisecond, Max: 5 * time.Millisecond, N: 3}},
		{"hundred", seq(100), Latency{P50: 50 * time.Millisecond, P99: 99 * time.Millisecond, Max: 100 * time.Millisecond, N: 100}},
		{"thousand", seq(1000), Latency{P50: 500 * time.Millisecond, P99: 990 * time.Millisecond, Max: 1000 * time.Millisecond, N: 1000}},
		{"ties", ms(2, 2, 2, 2, 2), Latency{P50: 2 * time.Millisecond, P99: 2 * time.Millisecond, Max: 2 * time.Millisecond, N: 5}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var before []time.Duration
			before = append(before, tc.in...)
			if got := Summarize(tc.in); got != tc.want {
				t.Errorf("Summarize = %+v, want %+v", got, tc.want)
			}
			for i := range before {
				if before[i] != tc.in[i] {
					t.Fatal("Summarize modified its input")
				}
			}
		})
	}
}

// streamCount returns how many streams the server currently has.
func streamCount(t *testing.T, url string) int {
	t.Helper()
	nc, err := nats.Connect(url)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	names := js.StreamNames(context.Background())
	for range names.Name() {
		n++
	}
	if err := names.Err(); err != nil {
		t.Fatal(err)
	}
	return n
}

func TestRawDrain(t *testing.T) {
	url := startServer(t, false)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	res, err := RawDrain(ctx, RawConfig{URL: url, Jobs: 2000, Workers: 4})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("drain: %+v", res)
	if res.Jobs != 2000 || res.Workers != 4 {
		t.Errorf("result = %+v, want 2000 jobs and 4 workers", res)
	}
	if res.Elapsed <= 0 || res.PerSec <= 0 {
		t.Errorf("non-positive timing %+v", res)
	}
	if n := streamCount(t, url); n != 0 {
		t.Errorf("%d streams left behind", n)
	}
}

func TestRawDrainOddCount(t *testing.T) {
	// Fewer jobs than workers*batch, and not a multiple of the batch size,
	// so every worker ends parked in a partially filled Fetch.
	url := startServer(t, false)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	res, err := RawDrain(ctx, RawConfig{URL: url, Jobs: 37, Workers: 5, PayloadBytes: 1})
	if err != nil {
		t.Fatal(err)
	}
	if res.Jobs != 37 {
		t.Errorf("jobs = %d, want 37", res.Jobs)
	}
}

func TestRawSteady(t *testing.T) {
	url := startServer(t, false)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	res, err := RawSteady(ctx, RawConfig{URL: url, Workers: 4, Rate: 200, SteadyFor: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("steady: offered %.1f/s over %v, sent %d done %d, runStart %+v, completed %+v",
		res.Offered, res.Duration, res.Sent, res.Done, res.RunStart, res.Completed)
	if res.Sent != 200 || res.Done != 200 {
		t.Errorf("sent %d done %d, want 200/200", res.Sent, res.Done)
	}
	if res.Offered < 150 || res.Offered > 250 {
		t.Errorf("offered rate %.1f/s, want about 200", res.Offered)
	}
	checkLatency(t, "RunStart", res.RunStart, 200)
	checkLatency(t, "Completed", res.Completed, 200)
	if res.Completed.P50 < res.RunStart.P50 || res.Completed.Max < res.RunStart.P50 {
		t.Errorf("completion before start? runStart %+v completed %+v", res.RunStart, res.Completed)
	}
	if n := streamCount(t, url); n != 0 {
		t.Errorf("%d streams left behind", n)
	}
}

func TestRawConfigErrors(t *testing.T) {
	ctx := context.Background()
	if _, err := RawDrain(ctx, RawConfig{}); err == nil {
		t.Error("RawDrain without URL: want error")
	}
	if _, err := RawSteady(ctx, RawConfig{URL: "nats://127.0.0.1:1", Workers: -1}); err == nil {
		t.Error("RawSteady with negative workers: want error")
	}
	if _, err := WriteRate(ctx, "nats://127.0.0.1:1", 0); err == nil {
		t.Error("WriteRate with 0 msgs: want error")
	}
}

func TestWriteRateAndStreamWrites(t *testing.T) {
	url := startServer(t, false)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	rate, err := WriteRate(ctx, url, 2000)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("write rate: %.0f/s", rate)
	if rate <= 0 {
		t.Errorf("rate = %v", rate)
	}

	nc, err := nats.Connect(url)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	for name, n := range map[string]int{"SW_A": 3, "SW_B": 5} {
		if _, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: name, Subjects: []string{"sw." + name}}); err != nil {
			t.Fatal(err)
		}
		for range n {
			if _, err := js.Publish(ctx, "sw."+name, nil); err != nil {
				t.Fatal(err)
			}
		}
	}
	// Purging does not reset LastSeq: writes stay counted.
	s, err := js.Stream(ctx, "SW_B")
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Purge(ctx); err != nil {
		t.Fatal(err)
	}
	got, err := StreamWrites(ctx, js, "SW_A", "SW_B")
	if err != nil {
		t.Fatal(err)
	}
	if got != 8 {
		t.Errorf("StreamWrites = %d, want 8", got)
	}
	if got, err := StreamWrites(ctx, js); err != nil || got != 0 {
		t.Errorf("StreamWrites() = %d, %v; want 0, nil", got, err)
	}
	if _, err := StreamWrites(ctx, js, "NOPE"); err == nil {
		t.Error("StreamWrites on a missing stream: want error")
	}
}

func TestProcessRSS(t *testing.T) {
	rss, err := ProcessRSS()
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("rss: %d bytes", rss)
	if rss == 0 {
		t.Skip("ProcessRSS not implemented on this OS")
	}
	if rss < 1<<20 {
		t.Errorf("rss = %d bytes, implausibly small", rss)
	}
}

func BenchmarkRawDrain(b *testing.B) {
	url := startServer(b, false)
	ctx := context.Background()
	cfg := RawConfig{URL: url, Jobs: 5000, Workers: 16}
	var perSec float64
	var runs int
	for b.Loop() {
		res, err := RawDrain(ctx, cfg)
		if err != nil {
			b.Fatal(err)
		}
		perSec += res.PerSec
		runs++
	}
	b.ReportMetric(perSec/float64(runs), "jobs/s")
}

// TestRawPrint prints the raw baseline against a lazily synced and a
// SyncAlways server. It is skipped unless BENCH_RAW is set; BENCH_RAW_JOBS
// and BENCH_RAW_WORKERS override N and W. Run it without -race:
//
//	BENCH_RAW=1 go test -run TestRawPrint -v ./bench/
func TestRawPrint(t *testing.T) {
	if os.Getenv("BENCH_RAW") == "" {
		t.Skip("set BENCH_RAW=1 to measure the raw baseline")
	}
	envInt := func(k string, def int) int {
		if v, err := strconv.Atoi(os.Getenv(k)); err == nil && v > 0 {
			return v
		}
		return def
	}
	jobs := envInt("BENCH_RAW_JOBS", DefaultJobs)
	workers := envInt("BENCH_RAW_WORKERS", DefaultWorkers)
	for _, mode := range []struct {
		name string
		sync bool
	}{{"lazy", false}, {"sync_always", true}} {
		t.Run(mode.name, func(t *testing.T) {
			url := startServer(t, mode.sync)
			ctx := context.Background()
			wr, err := WriteRate(ctx, url, jobs)
			if err != nil {
				t.Fatal(err)
			}
			t.Logf("WriteRate(%d): %.0f writes/s", jobs, wr)
			for i := range 3 {
				res, err := RawDrain(ctx, RawConfig{URL: url, Jobs: jobs, Workers: workers})
				if err != nil {
					t.Fatal(err)
				}
				t.Logf("RawDrain #%d N=%d W=%d: %v, %.0f jobs/s", i+1, res.Jobs, res.Workers, res.Elapsed, res.PerSec)
			}
			if os.Getenv("BENCH_RAW_STEADY") != "" {
				res, err := RawSteady(ctx, RawConfig{URL: url, Workers: workers, SteadyFor: 5 * time.Second})
				if err != nil {
					t.Fatal(err)
				}
				t.Logf("RawSteady: offered %.1f/s sent %d done %d runStart %+v completed %+v",
					res.Offered, res.Sent, res.Done, res.RunStart, res.Completed)
			}
		})
	}
}

// TestFloors runs every floor variant's drain and steady measurement on a
// small scale and checks that each did the design's writes.
//
// Each variant gets a fresh server, as in `fleet bench`: on a shared one,
// creating the next variant's bucket right after the last one's streams
// were deleted failed now and then inside nats-server ("error creating
// store for stream").
func TestFloors(t *testing.T) {
	for _, c := range []struct {
		kind   FloorKind
		writes float64
	}{{FloorDesign, 7}, {FloorDirect, 4}, {FloorDirectBatch, 4}} {
		t.Run(string(c.kind), func(t *testing.T) {
			url := startServer(t, false)
			res, err := FloorDrain(context.Background(), RawConfig{URL: url, Jobs: 501, Workers: 4}, c.kind)
			if err != nil {
				t.Fatal(err)
			}
			if res.Jobs != 501 || res.PerSec <= 0 || res.Elapsed <= 0 {
				t.Errorf("result %+v", res)
			}
			if res.WritesPerJob != c.writes {
				t.Errorf("writes per job %.3f, want %v", res.WritesPerJob, c.writes)
			}
			st, err := FloorSteady(context.Background(), RawConfig{URL: url, Workers: 4, Rate: 200, SteadyFor: 500 * time.Millisecond}, c.kind)
			if err != nil {
				t.Fatal(err)
			}
			if st.Sent != 100 || st.Done != 100 {
				t.Errorf("steady sent %d done %d, want 100", st.Sent, st.Done)
			}
			checkLatency(t, "run start", st.RunStart, 100)
			checkLatency(t, "completed", st.Completed, 100)
			if st.Completed.P50 < st.RunStart.P50 {
				t.Errorf("completed p50 %v before run-start p50 %v", st.Completed.P50, st.RunStart.P50)
			}
		})
	}
	if _, err := FloorDrain(context.Background(), RawConfig{URL: "nats://127.0.0.1:1", Jobs: 1}, "other"); err == nil {
		t.Error("unknown floor accepted")
	}
}

func TestRawPools(t *testing.T) {
	url := startServer(t, false)
	res, err := RawPools(context.Background(), url, 5, 10, 2, 200, 500*time.Millisecond, 50)
	if err != nil {
		t.Fatal(err)
	}
	if res.Name != "5 pools" || res.Steady.Sent != 100 || res.Steady.Done != 100 || res.BurstJobs != 50 || res.BurstPerSec <= 0 {
		t.Errorf("result %+v", res)
	}
	checkLatency(t, "run start", res.Steady.RunStart, 100)
	checkLatency(t, "completed", res.Steady.Completed, 100)
	if _, err := RawPools(context.Background(), url, 5, 4, 1, 200, time.Second, 10); err == nil {
		t.Error("fewer connections than pools accepted")
	}
}
