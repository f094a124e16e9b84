package bench

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"runtime"
	"strconv"
	"strings"
	"time"

	"go.uber.org/zap"
)

// Config configures Run, the whole of `fleet bench`. Zero fields take the
// defaults of RawConfig, FleetConfig and ScaleConfig.
type Config struct {
	Jobs      int           // N of every drain, default 20000
	Factories int           // fleet factories, default 4
	Slots     int           // slots per factory, default 4; the raw baseline gets Factories×Slots workers
	Rate      float64       // steady offered jobs/s, default 1000
	SteadyFor time.Duration // steady window, default 10s
	Modes     []Mode        // default lazy, always
	SkipExec  bool          // skip the exec-runner measurements
	SkipFloor bool          // skip the design floors (measured in lazy mode only)
	SkipScale bool
	Scale     ScaleConfig // Jobs, Pools, For, BurstJobs; the rest is taken from above
	// StallAfter is how long a wait sees no job finish before it records a
	// stall and moves on; default 20s.
	StallAfter time.Duration
	Log        *zap.Logger
	// Progress receives a line per step (nil: silent).
	Progress func(format string, args ...any)
}

func (c Config) withDefaults() (Config, error) {
	if c.Jobs < 0 || c.Factories < 0 || c.Slots < 0 || c.Rate < 0 || c.SteadyFor < 0 || c.StallAfter < 0 {
		return c, fmt.Errorf("bench: invalid Config %+v", c)
	}
	c.Jobs = orDefault(c.Jobs, DefaultJobs)
	c.Factories = orDefault(c.Factories, DefaultFactories)
	c.Slots = orDefault(c.Slots, DefaultSlots)
	c.Rate = orDefault(c.Rate, DefaultRate)
	c.SteadyFor = orDefault(c.SteadyFor, DefaultSteadyFor)
	c.StallAfter = orDefault(c.StallAfter, 20*time.Second)
	if len(c.Modes) == 0 {
		c.Modes = []Mode{ModeLazy, ModeAlways}
	}
	if c.Log == nil {
		c.Log = zap.NewNop()
	}
	if c.Progress == nil {
		c.Progress = func(string, ...any) {}
	}
	c.Scale.Factories, c.Scale.Slots, c.Scale.Rate = c.Factories, c.Slots, c.Rate
	c.Scale.Log, c.Scale.Progress = c.Log, c.Progress
	var err error
	c.Scale, err = c.Scale.withDefaults()
	return c, err
}

// Machine describes where the run happened.
type Machine struct {
	CPUs       int
	GOMAXPROCS int
	CPUModel   string
	MemTotal   string
	OS, Arch   string
	Kernel     string
	GoVersion  string
}

func thisMachine() Machine {
	m := Machine{CPUs: runtime.NumCPU(), GOMAXPROCS: runtime.GOMAXPROCS(0), OS: runtime.GOOS, Arch: runtime.GOARCH,
		GoVersion: runtime.Version()}
	m.CPUModel = procField("/proc/cpuinfo", "model name")
	if v := strings.Fields(procField("/proc/meminfo", "MemTotal")); len(v) == 2 && v[1] == "kB" {
		if kb, err := strconv.ParseFloat(v[0], 64); err == nil {
			m.MemTotal = fmt.Sprintf("%.1f GiB", kb/(1<<20))
		}
	}
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		m.Kernel = strings.TrimSpace(string(b))
	}
	return m
}

// procField returns the value of the first "key: value" line of a /proc file.
func procField(path, key string) string {
	f, err := os.Open(path)
	if err != nil {
		return ""
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if ok && strings.TrimSpace(k) == key {
			return strings.Join(strings.Fields(v), " ")
		}
	}
	return ""
}

// FleetRun is one runner's fleet measurements in one mode, with the ratios
// to the raw baseline of the same run.
type FleetRun struct {
	Runner    RunnerKind
	Drain     *FleetDrainResult
	DrainErr  string
	Steady    *FleetSteadyResult
	SteadyErr string
	// DrainRatio is fleet drain jobs/s ÷ raw drain jobs/s.
	DrainRatio float64
	// RunStartRatio and CompletedRatio are fleet p50 ÷ raw p50 of the
	// steady latencies.
	RunStartRatio, CompletedRatio float64
	// FsyncRates are the synced write rates (WriteRate) sampled on the
	// drain's own server right before and right after it (sync-always mode
	// only): the disk's rate moves by more than the target's margin within
	// a run, so the bound is taken from the minutes the drain ran in.
	FsyncRates []float64
	// FsyncBound is the mean of FsyncRates ÷ the drain phase's writes per
	// job: the drain rate the disk allows if every write is synced on its
	// own. FsyncFraction is the fleet drain's share of it.
	FsyncBound, FsyncFraction float64
}

// FloorRun is one design-floor variant's measurements, with the ratios to
// the raw baseline of the same run.
type FloorRun struct {
	Kind                      FloorKind
	Drain                     *FloorResult
	DrainErr                  string
	Steady                    *SteadyResult
	SteadyErr                 string
	DrainRatio, RunStartRatio float64
}

// ModeRun is everything measured in one sync mode.
type ModeRun struct {
	Mode Mode
	// WriteRate is what bench.WriteRate measured on a fresh server of this
	// mode: stored (and in sync-always, synced) writes per second.
	WriteRate    float64
	WriteRateErr string
	RawDrain     *DrainResult
	RawDrainErr  string
	RawSteady    *SteadyResult
	RawSteadyErr string
	// Floors: the design's JetStream work done by bare code (lazy mode).
	Floors []FloorRun
	Fleet  []FleetRun
}

// Target is one of the targets and whether the run met it.
type Target struct {
	Name     string
	Want     string
	Measured string
	Met      bool
	Missing  bool // not measured in this run
}

// Report is the outcome of Run.
type Report struct {
	Started  time.Time
	Elapsed  time.Duration
	Machine  Machine
	Command  string // how the run was started, set by the caller
	Config   Config
	Modes    []ModeRun
	Scale    *ScaleResult
	ScaleErr string
	Targets  []Target
}

// Failed reports whether any measurement failed or stalled.
func (r *Report) Failed() bool {
	for _, m := range r.Modes {
		if m.WriteRateErr != "" || m.RawDrainErr != "" || m.RawSteadyErr != "" {
			return true
		}
		for _, f := range m.Floors {
			if f.DrainErr != "" || f.SteadyErr != "" {
				return true
			}
		}
		for _, f := range m.Fleet {
			if f.DrainErr != "" || f.SteadyErr != "" ||
				f.Drain != nil && f.Drain.Stalled != "" || f.Steady != nil && f.Steady.Stalled != "" {
				return true
			}
		}
	}
	if r.ScaleErr != "" {
		return true
	}
	if r.Scale != nil {
		if r.Scale.RawErr != "" {
			return true
		}
		for _, d := range r.Scale.Dispatch {
			if d.Stalled != "" {
				return true
			}
		}
	}
	return false
}

// Run measures, in every mode, the raw JetStream baseline and the fleet end
// to end (no-op runner, then exec runner), each on a fresh embedded server,
// then (unless skipped) the scale measurements. A measurement that fails is
// recorded in the report and the run goes on; Run itself fails only on a
// bad config or when ctx ends.
//
// Every measurement runs under the pprof label phase=<mode>/<what> (and
// each component under part=...), so a CPU profile of the run can be split.
func Run(ctx context.Context, cfg Config) (*Report, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	prevStall := stallAfter
	stallAfter = cfg.StallAfter
	defer func() { stallAfter = prevStall }()

	rep := &Report{Started: time.Now(), Machine: thisMachine(), Config: cfg}
	t0 := time.Now()
	say := func(format string, args ...any) {
		cfg.Progress("[%5.1fs] "+format, append([]any{time.Since(t0).Seconds()}, args...)...)
	}
	cfg.Scale.Progress = say
	workers := cfg.Factories * cfg.Slots
	errText := func(err error) string {
		if err == nil {
			return ""
		}
		return err.Error()
	}
	phase := func(name string, fn func(ctx context.Context) error) error {
		var err error
		labelled(ctx, "phase", name, func(ctx context.Context) { err = fn(ctx) })
		if err != nil && ctx.Err() == nil {
			say("%s: FAILED: %v", name, err)
		}
		return err
	}

	for _, mode := range cfg.Modes {
		mr := ModeRun{Mode: mode}
		raw := RawConfig{Jobs: cfg.Jobs, Workers: workers, Rate: cfg.Rate, SteadyFor: cfg.SteadyFor}

		say("%s: raw write rate (%d messages)", mode, cfg.Jobs)
		err := phase(string(mode)+"/raw-write-rate", func(ctx context.Context) error {
			return withServer(ctx, mode, func(url string) (err error) {
				labelled(ctx, "part", "harness", func(ctx context.Context) { mr.WriteRate, err = WriteRate(ctx, url, cfg.Jobs) })
				return err
			})
		})
		mr.WriteRateErr = errText(err)

		say("%s: raw drain, N=%d W=%d", mode, cfg.Jobs, workers)
		err = phase(string(mode)+"/raw-drain", func(ctx context.Context) error {
			return withServer(ctx, mode, func(url string) (err error) {
				raw.URL = url
				var d DrainResult
				labelled(ctx, "part", "harness", func(ctx context.Context) { d, err = RawDrain(ctx, raw) })
				if err == nil {
					mr.RawDrain = &d
				}
				return err
			})
		})
		mr.RawDrainErr = errText(err)

		say("%s: raw steady, %.0f/s for %v", mode, cfg.Rate, cfg.SteadyFor)
		err = phase(string(mode)+"/raw-steady", func(ctx context.Context) error {
			return withServer(ctx, mode, func(url string) (err error) {
				raw.URL = url
				var s SteadyResult
				labelled(ctx, "part", "harness", func(ctx context.Context) { s, err = RawSteady(ctx, raw) })
				if err == nil {
					mr.RawSteady = &s
				}
				return err
			})
		})
		mr.RawSteadyErr = errText(err)

		for _, kind := range FloorKinds {
			if cfg.SkipFloor || mode != ModeLazy {
				break
			}
			fl := FloorRun{Kind: kind}
			say("%s: %s floor, drain N=%d and steady %.0f/s for %v", mode, kind, cfg.Jobs, cfg.Rate, cfg.SteadyFor)
			err = phase(fmt.Sprintf("%s/floor-%s-drain", mode, kind), func(ctx context.Context) error {
				return withServer(ctx, mode, func(url string) (err error) {
					raw.URL = url
					var d FloorResult
					labelled(ctx, "part", "harness", func(ctx context.Context) { d, err = FloorDrain(ctx, raw, kind) })
					if err == nil {
						fl.Drain = &d
					}
					return err
				})
			})
			fl.DrainErr = errText(err)
			err = phase(fmt.Sprintf("%s/floor-%s-steady", mode, kind), func(ctx context.Context) error {
				return withServer(ctx, mode, func(url string) (err error) {
					raw.URL = url
					var s SteadyResult
					labelled(ctx, "part", "harness", func(ctx context.Context) { s, err = FloorSteady(ctx, raw, kind) })
					if err == nil {
						fl.Steady = &s
					}
					return err
				})
			})
			fl.SteadyErr = errText(err)
			if fl.Drain != nil {
				fl.DrainRatio = mr.drainVsRaw(fl.Drain.PerSec)
			}
			if fl.Steady != nil {
				fl.RunStartRatio = mr.runStartVsRaw(fl.Steady.RunStart.P50)
			}
			mr.Floors = append(mr.Floors, fl)
		}

		runners := []RunnerKind{RunnerNoop, RunnerExec}
		if cfg.SkipExec {
			runners = runners[:1]
		}
		for _, kind := range runners {
			fr := FleetRun{Runner: kind}
			fc := FleetConfig{Jobs: cfg.Jobs, Factories: cfg.Factories, Slots: cfg.Slots, Rate: cfg.Rate,
				SteadyFor: cfg.SteadyFor, Runner: kind, Log: cfg.Log}

			say("%s: fleet drain, %s runner, N=%d, %d×%d slots", mode, kind, cfg.Jobs, cfg.Factories, cfg.Slots)
			err := phase(fmt.Sprintf("%s/fleet-%s-drain", mode, kind), func(ctx context.Context) error {
				return withServer(ctx, mode, func(url string) error {
					fc.URL = url
					sampleRate := func() {
						if mode != ModeAlways {
							return
						}
						var wr float64
						var err error
						labelled(ctx, "part", "harness", func(ctx context.Context) { wr, err = WriteRate(ctx, url, bracketWrites(cfg.Jobs)) })
						if err != nil {
							say("%s: write rate around the fleet drain: FAILED: %v", mode, err)
							return
						}
						fr.FsyncRates = append(fr.FsyncRates, wr)
					}
					sampleRate()
					d, err := FleetDrain(ctx, fc)
					if err == nil {
						fr.Drain = &d
						if d.Stalled != "" {
							say("%s: fleet drain STALLED after %d of %d jobs: %s", mode, d.Done, d.Jobs, d.Stalled)
						}
						sampleRate()
					}
					return err
				})
			})
			fr.DrainErr = errText(err)

			say("%s: fleet steady, %s runner, %.0f/s for %v", mode, kind, cfg.Rate, cfg.SteadyFor)
			err = phase(fmt.Sprintf("%s/fleet-%s-steady", mode, kind), func(ctx context.Context) error {
				return withServer(ctx, mode, func(url string) error {
					fc.URL = url
					s, err := FleetSteady(ctx, fc)
					if err == nil {
						fr.Steady = &s
						if s.Stalled != "" {
							say("%s: fleet steady STALLED after %d of %d jobs: %s", mode, s.Done, s.Sent, s.Stalled)
						}
					}
					return err
				})
			})
			fr.SteadyErr = errText(err)
			fr.ratios(mr)
			mr.Fleet = append(mr.Fleet, fr)
		}
		rep.Modes = append(rep.Modes, mr)
		if ctx.Err() != nil {
			return rep, ctx.Err()
		}
	}

	if !cfg.SkipScale {
		say("scale: %d held jobs, %d pools", cfg.Scale.Jobs, cfg.Scale.Pools)
		err := phase("lazy/scale", func(ctx context.Context) error {
			s, err := Scale(ctx, cfg.Scale)
			rep.Scale = &s
			return err
		})
		rep.ScaleErr = errText(err)
	}
	rep.Elapsed = time.Since(t0)
	rep.Targets = rep.evaluate()
	say("done")
	return rep, ctx.Err()
}

// ratios fills the comparisons with the raw baseline of the same mode.
func (f *FleetRun) ratios(m ModeRun) {
	if f.Drain != nil {
		f.DrainRatio = m.drainVsRaw(f.Drain.PerSec)
	}
	if f.Steady != nil && m.RawSteady != nil {
		f.RunStartRatio = m.runStartVsRaw(f.Steady.RunStart.P50)
		if p := m.RawSteady.Completed.P50; p > 0 {
			f.CompletedRatio = float64(f.Steady.Completed.P50) / float64(p)
		}
	}
	if f.Drain != nil && len(f.FsyncRates) > 0 && f.Drain.DrainWrites.PerJob > 0 {
		f.FsyncBound = mean(f.FsyncRates) / f.Drain.DrainWrites.PerJob
		f.FsyncFraction = f.Drain.PerSec / f.FsyncBound
	}
}

// bracketWrites is how many messages each write-rate sample around a
// sync-always drain publishes: a quarter of the drain's jobs (about as
// many writes as the drain makes in a second or two), at least 1,000.
func bracketWrites(jobs int) int { return max(1000, jobs/4) }

func mean(xs []float64) float64 {
	var sum float64
	for _, x := range xs {
		sum += x
	}
	return sum / float64(len(xs))
}

// drainVsRaw is perSec ÷ the raw drain's rate of the mode (0 without one).
func (m ModeRun) drainVsRaw(perSec float64) float64 {
	if m.RawDrain == nil || m.RawDrain.PerSec <= 0 {
		return 0
	}
	return perSec / m.RawDrain.PerSec
}

// runStartVsRaw is p50 ÷ the raw steady run-start p50 of the mode (0
// without one).
func (m ModeRun) runStartVsRaw(p50 time.Duration) float64 {
	if m.RawSteady == nil || m.RawSteady.RunStart.P50 <= 0 {
		return 0
	}
	return float64(p50) / float64(m.RawSteady.RunStart.P50)
}

func (r *Report) mode(m Mode) *ModeRun {
	for i := range r.Modes {
		if r.Modes[i].Mode == m {
			return &r.Modes[i]
		}
	}
	return nil
}

func (m *ModeRun) floor(kind FloorKind) *FloorRun {
	if m == nil {
		return nil
	}
	for i := range m.Floors {
		if m.Floors[i].Kind == kind {
			return &m.Floors[i]
		}
	}
	return nil
}

func (m *ModeRun) fleet(kind RunnerKind) *FleetRun {
	if m == nil {
		return nil
	}
	for i := range m.Fleet {
		if m.Fleet[i].Runner == kind {
			return &m.Fleet[i]
		}
	}
	return nil
}

// Dispatch growth tolerances of the scale target: a case passes if its
// steady run-start p50 is within growthLatency× (plus growthSlack) of the
// reference and its burst rate within 1/growthThroughput of it.
const (
	growthLatency    = 1.5
	growthSlack      = 250 * time.Microsecond
	growthThroughput = 1.5
)

// evaluate checks the targets against the report.
func (r *Report) evaluate() []Target {
	var out []Target
	lazy := r.mode(ModeLazy).fleet(RunnerNoop)
	always := r.mode(ModeAlways).fleet(RunnerNoop)

	t := Target{Name: "lazy drain vs raw", Want: "fleet no-op drain ≥ 0.3× raw double-ack drain"}
	if lazy != nil && lazy.Drain != nil && lazy.DrainRatio > 0 {
		t.Measured = fmt.Sprintf("%.3f× (%.0f vs %.0f jobs/s)", lazy.DrainRatio, lazy.Drain.PerSec, r.mode(ModeLazy).RawDrain.PerSec)
		t.Met = lazy.DrainRatio >= 0.3 && lazy.Drain.Stalled == ""
		if lazy.Drain.Stalled != "" {
			t.Measured += ", stalled"
		}
		if d, c := r.mode(ModeLazy).floor(FloorDesign), r.mode(ModeLazy).floor(FloorDirectBatch); d != nil && d.Drain != nil {
			t.Measured += fmt.Sprintf("; the design's floor %.3f×", d.DrainRatio)
			if c != nil && c.Drain != nil {
				t.Measured += fmt.Sprintf(", any fenced design's %.3f×", c.DrainRatio)
			}
		}
	} else {
		t.Missing = true
	}
	out = append(out, t)

	t = Target{Name: "lazy steady latency", Want: "submit→run-start p50 ≤ 1 ms, p99 ≤ 2 ms at 1,000 jobs/s"}
	if lazy != nil && lazy.Steady != nil {
		l := lazy.Steady.RunStart
		t.Measured = fmt.Sprintf("p50 %s, p99 %s (offered %.0f/s)", fmtDur(l.P50), fmtDur(l.P99), lazy.Steady.Offered)
		t.Met = l.P50 <= time.Millisecond && l.P99 <= 2*time.Millisecond && lazy.Steady.Stalled == ""
		if d := r.mode(ModeLazy).floor(FloorDesign); d != nil && d.Steady != nil {
			t.Measured += fmt.Sprintf("; the design's floor p50 %s, p99 %s", fmtDur(d.Steady.RunStart.P50), fmtDur(d.Steady.RunStart.P99))
		}
	} else {
		t.Missing = true
	}
	out = append(out, t)

	t = Target{Name: "sync-always vs fsync bound", Want: "fleet no-op drain ≥ 80% of write rate ÷ writes per job"}
	if always != nil && always.FsyncBound > 0 {
		t.Measured = fmt.Sprintf("%.0f%% (%.0f of %.0f jobs/s; %s writes/s ÷ %.2f writes/job)", 100*always.FsyncFraction,
			always.Drain.PerSec, always.FsyncBound, fmtRates(always.FsyncRates), always.Drain.DrainWrites.PerJob)
		t.Met = always.FsyncFraction >= 0.8 && always.Drain.Stalled == ""
	} else {
		t.Missing = true
	}
	out = append(out, t)

	t = Target{Name: "coordinator memory", Want: "≤ 1 KB per queued job"}
	if r.Scale != nil && r.Scale.Memory.Heap != 0 {
		m := r.Scale.Memory
		t.Measured = fmt.Sprintf("%.0f B/job at %d queued (after a takeover: %.0f B/job)", m.PerJobBytes, m.Jobs, m.RebuildPerJobBytes)
		t.Met = m.PerJobBytes <= 1024 && m.RebuildPerJobBytes <= 1024
	} else {
		t.Missing = true
	}
	out = append(out, t)

	t = Target{Name: "dispatch cost vs jobs/pools/factories", Want: fmt.Sprintf(
		"every scale case: run-start p50 ≤ %.1f× reference + %v, burst ≥ reference ÷ %.1f", growthLatency, growthSlack, growthThroughput)}
	if r.Scale != nil && len(r.Scale.Dispatch) > 1 {
		ref := r.Scale.Dispatch[0]
		t.Met = ref.Stalled == ""
		var parts []string
		for _, d := range r.Scale.Dispatch[1:] {
			lat := float64(d.Steady.RunStart.P50) / float64(max(1, ref.Steady.RunStart.P50))
			thr := d.BurstPerSec / max(1e-9, ref.BurstPerSec)
			ok := d.Stalled == "" && d.Steady.RunStart.P50 <= time.Duration(growthLatency*float64(ref.Steady.RunStart.P50))+growthSlack &&
				d.BurstPerSec*growthThroughput >= ref.BurstPerSec
			s := fmt.Sprintf("%s: p50 %.2f×, burst %.2f×", d.Name, lat, thr)
			if d.Stalled != "" {
				s = d.Name + ": stalled"
			}
			parts = append(parts, s)
			t.Met = t.Met && ok
		}
		t.Measured = strings.Join(parts, "; ")
		if raw := r.Scale.Raw; len(raw) == 2 && raw[0].Steady.RunStart.P50 > 0 && raw[0].BurstPerSec > 0 {
			t.Measured += fmt.Sprintf("; raw JetStream itself, %s vs %s: p50 %.2f×, burst %.2f×", raw[1].Name, raw[0].Name,
				float64(raw[1].Steady.RunStart.P50)/float64(raw[0].Steady.RunStart.P50), raw[1].BurstPerSec/raw[0].BurstPerSec)
		}
	} else {
		t.Missing = true
	}
	out = append(out, t)
	return out
}

// ErrFailed is returned by callers that treat a failed or stalled
// measurement as a failed run.
var ErrFailed = errors.New("bench: a measurement failed or stalled")
