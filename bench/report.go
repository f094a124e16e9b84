package bench

import (
	"encoding/json"
	"fmt"
	"io"
	"math"
	"slices"
	"strings"
	"text/tabwriter"
	"time"
)

// fmtDur prints a latency in ms with 2-3 significant decimals.
func fmtDur(d time.Duration) string {
	ms := float64(d) / float64(time.Millisecond)
	switch {
	case d == 0:
		return "-"
	case ms < 10:
		return fmt.Sprintf("%.2f ms", ms)
	case ms < 1000:
		return fmt.Sprintf("%.1f ms", ms)
	default:
		return fmt.Sprintf("%.2f s", ms/1000)
	}
}

// fmtLat prints p50/p99/max without units, in ms.
func fmtLat(l Latency, withMax bool) string {
	f := func(d time.Duration) string {
		ms := float64(d) / float64(time.Millisecond)
		switch {
		case ms < 10:
			return fmt.Sprintf("%.2f", ms)
		case ms < 100:
			return fmt.Sprintf("%.1f", ms)
		default:
			return fmt.Sprintf("%.0f", ms)
		}
	}
	if l.N == 0 {
		return "-"
	}
	if withMax {
		return f(l.P50) + " / " + f(l.P99) + " / " + f(l.Max)
	}
	return f(l.P50) + " / " + f(l.P99)
}

// fmtRate prints a rate with thousands separators.
func fmtRate(v float64) string {
	if v <= 0 || math.IsNaN(v) || math.IsInf(v, 0) {
		return "-"
	}
	n := int64(math.Round(v))
	s := fmt.Sprint(n)
	var b strings.Builder
	for i, c := range s {
		if i > 0 && (len(s)-i)%3 == 0 {
			b.WriteByte(',')
		}
		b.WriteRune(c)
	}
	return b.String()
}

// fmtRates prints rates as "a" or "mean of a and b" (or "mean of a, b, c").
func fmtRates(vs []float64) string {
	if len(vs) == 1 {
		return fmtRate(vs[0])
	}
	parts := make([]string, len(vs))
	for i, v := range vs {
		parts[i] = fmtRate(v)
	}
	return "mean of " + strings.Join(parts[:len(parts)-1], ", ") + " and " + parts[len(parts)-1]
}

// fmtCPU prints a CPU time per job in µs.
func fmtCPU(d time.Duration) string {
	if d <= 0 {
		return "-"
	}
	return fmt.Sprintf("%.0f", float64(d)/float64(time.Microsecond))
}

func fmtBytes(v float64) string {
	switch a := math.Abs(v); {
	case a >= 1<<20:
		return fmt.Sprintf("%.1f MiB", v/(1<<20))
	case a >= 1<<10:
		return fmt.Sprintf("%.1f KiB", v/(1<<10))
	default:
		return fmt.Sprintf("%.0f B", v)
	}
}

func runnerName(k RunnerKind) string {
	if k == RunnerExec {
		return "fleet, exec `true`"
	}
	return "fleet, no-op runner"
}

func floorName(k FloorKind) string {
	switch k {
	case FloorDesign:
		return "floor: the design"
	case FloorDirect:
		return "floor: no hop, no events"
	default:
		return "floor: …, batch 32"
	}
}

// streamOrder is the order of the per-stream write columns.
var streamOrder = []string{"FLEET_INGEST", "KV_fleet_jobs", "FLEET_EVENTS", "FLEET_JOBS", "FLEET_LOGS", "FLEET_DEAD"}

// WriteTable prints the report as human-readable tables.
func (r *Report) WriteTable(out io.Writer) error {
	w := &errWriter{w: out}
	m := r.Machine
	c := r.Config
	w.printf("fleet bench — %d CPUs (%s), %s, %s/%s, kernel %s, %s — took %v\n", m.CPUs, orDash(m.CPUModel), orDash(m.MemTotal),
		m.OS, m.Arch, orDash(m.Kernel), m.GoVersion, r.Elapsed.Round(time.Second))
	if r.Command != "" {
		w.printf("command: %s\n", r.Command)
	}
	w.printf("drain N=%d; fleet %d factories × %d slots, raw baseline %d workers; steady %.0f jobs/s for %v\n\n",
		c.Jobs, c.Factories, c.Slots, c.Factories*c.Slots, c.Rate, c.SteadyFor)

	if len(r.Modes) > 0 {
		w.printf("END TO END (latencies in ms: submit→run-start p50/p99/max, submit→completed p50/p99)\n")
		tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "MODE\tWHAT\tDRAIN jobs/s\t×RAW\tCPU µs/job\tRUN-START\t×RAW p50\tCOMPLETED\tSTEADY jobs/s\tWRITES/JOB\tNOTES")
		for _, mr := range r.Modes {
			note := ""
			if mr.WriteRate > 0 {
				note = "write rate " + fmtRate(mr.WriteRate) + "/s"
			}
			note = joinNotes(note, errNote("write rate", mr.WriteRateErr), errNote("drain", mr.RawDrainErr), errNote("steady", mr.RawSteadyErr))
			drain, cpu, run, done, rate := "-", "-", "-", "-", "-"
			if d := mr.RawDrain; d != nil {
				drain, cpu = fmtRate(d.PerSec), fmtCPU(cpuPerJob(d.CPU, d.Jobs))
			}
			if mr.RawSteady != nil {
				run, done, rate = fmtLat(mr.RawSteady.RunStart, true), fmtLat(mr.RawSteady.Completed, false), fmtRate(mr.RawSteady.Offered)
			}
			fmt.Fprintf(tw, "%s\traw JetStream\t%s\t1\t%s\t%s\t1\t%s\t%s\t1 (+ack)\t%s\n", mr.Mode, drain, cpu, run, done, rate, note)
			for _, f := range mr.Floors {
				drain, ratio, cpu, run, rratio, done, rate, writes := "-", "-", "-", "-", "-", "-", "-", "-"
				if d := f.Drain; d != nil {
					drain, ratio, writes = fmtRate(d.PerSec), fmt.Sprintf("%.3f", f.DrainRatio), fmt.Sprintf("%.2f", d.WritesPerJob)
					cpu = fmtCPU(cpuPerJob(d.CPU, d.Jobs))
				}
				if s := f.Steady; s != nil {
					run, done, rate = fmtLat(s.RunStart, true), fmtLat(s.Completed, false), fmtRate(s.Offered)
					rratio = fmt.Sprintf("%.1f", f.RunStartRatio)
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", mr.Mode, floorName(f.Kind), drain, ratio, cpu, run, rratio,
					done, rate, writes, joinNotes(errNote("drain", f.DrainErr), errNote("steady", f.SteadyErr)))
			}
			for _, f := range mr.Fleet {
				drain, ratio, cpu, run, rratio, done, rate, writes := "-", "-", "-", "-", "-", "-", "-", "-"
				var notes []string
				if d := f.Drain; d != nil {
					drain, ratio, cpu = fmtRate(d.PerSec), fmt.Sprintf("%.3f", f.DrainRatio), fmtCPU(cpuPerJob(d.CPU, d.Done))
					notes = append(notes, fmt.Sprintf("ingest %s/s", fmtRate(d.IngestPerSec)))
					if d.Stalled != "" {
						drain += fmt.Sprintf(" (STALLED at %d/%d)", d.Done, d.Jobs)
					}
				}
				if s := f.Steady; s != nil {
					run, done, rate = fmtLat(s.RunStart, true), fmtLat(s.Completed, false), fmtRate(s.Throughput)
					rratio = fmt.Sprintf("%.1f", f.RunStartRatio)
					writes = fmt.Sprintf("%.2f", s.Writes.PerJob)
					if s.Stalled != "" {
						rate += fmt.Sprintf(" (STALLED at %d/%d)", s.Done, s.Sent)
					}
				}
				if f.FsyncBound > 0 && mr.Mode == ModeAlways {
					notes = append(notes, fmt.Sprintf("fsync bound %s/s (write rate %s/s around the drain), %.0f%% of it",
						fmtRate(f.FsyncBound), fmtRates(f.FsyncRates), 100*f.FsyncFraction))
				}
				notes = append(notes, errNote("drain", f.DrainErr), errNote("steady", f.SteadyErr))
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", mr.Mode, runnerName(f.Runner), drain, ratio, cpu, run, rratio,
					done, rate, writes, joinNotes(notes...))
			}
		}
		_ = tw.Flush()
		w.printf("\nWRITES PER FINISHED JOB by stream (steady: a job's whole life; drain: the drain phase only)\n")
		tw = tabwriter.NewWriter(w, 0, 4, 2, ' ', tabwriter.AlignRight)
		fmt.Fprintln(tw, "MODE\tRUNNER\tWINDOW\t"+strings.Join(streamOrder, "\t")+"\tOTHER\tTOTAL\t")
		for _, mr := range r.Modes {
			for _, f := range mr.Fleet {
				if f.Steady != nil {
					fmt.Fprintf(tw, "%s\t%s\tsteady\t%s\t\n", mr.Mode, f.Runner, writeCols(f.Steady.Writes))
				}
				if f.Drain != nil {
					fmt.Fprintf(tw, "%s\t%s\tdrain\t%s\t\n", mr.Mode, f.Runner, writeCols(f.Drain.DrainWrites))
				}
			}
		}
		_ = tw.Flush()
		w.printf("\nSTEADY LATENCY BY STAGE, p50 / p99 ms (event arrival times at an observer; see Stages)\n")
		tw = tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "MODE\tRUNNER\tINGEST\tGATE\tCLAIM\tFINISH")
		for _, mr := range r.Modes {
			for _, f := range mr.Fleet {
				if f.Steady != nil {
					fmt.Fprintf(tw, "%s\t%s\t%s\n", mr.Mode, f.Runner, stageCols(f.Steady.Stages))
				}
			}
		}
		_ = tw.Flush()
	}

	if s := r.Scale; s != nil {
		mem := s.Memory
		w.printf("\nSCALE (lazy sync)\n")
		if mem.Jobs > 0 && mem.Heap != 0 {
			w.printf("memory: %d queued jobs no pool can take, ingested at %s/s (unroutable flags done %v later)\n",
				mem.Jobs, fmtRate(mem.IngestPerSec), mem.MarkSettling.Round(time.Millisecond))
			w.printf("  coordinator heap %s (idle coordinator %s) → %.0f B per queued job\n", fmtBytes(float64(mem.Heap)),
				fmtBytes(float64(mem.IdleHeap)), mem.PerJobBytes)
			w.printf("  a new leader took over in %v → %.0f B per queued job; whole-process RSS grew %.0f B per job (broker included)\n",
				mem.RebuildElapsed.Round(time.Millisecond), mem.RebuildPerJobBytes, mem.ProcessRSSPerJob)
		}
		if len(s.Dispatch) > 0 {
			w.printf("dispatch (no-op runner; steady %.0f jobs/s for %v, then a burst; latencies in ms, stages p50 / p99):\n", c.Rate, c.Scale.For)
			tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "CASE\tFACTORIES\tSTART\tRUN-START\tCOMPLETED\tBURST jobs/s\tINGEST\tGATE\tCLAIM\tFINISH\tNOTES")
			for _, d := range s.Dispatch {
				note := ""
				if d.Stalled != "" {
					note = "STALLED: " + d.Stalled
				}
				fmt.Fprintf(tw, "%s\t%d×%d\t%v\t%s\t%s\t%s\t%s\t%s\n", d.Name, d.Factories, d.SlotsPerFactory,
					d.StartElapsed.Round(10*time.Millisecond), fmtLat(d.Steady.RunStart, true), fmtLat(d.Steady.Completed, false),
					fmtRate(d.BurstPerSec), stageCols(d.Stages), note)
			}
			for _, rp := range s.Raw {
				fmt.Fprintf(tw, "raw JetStream, %s\t%d×%d\t-\t%s\t%s\t%s\t-\t-\t-\t-\tno fleet: a consumer per pool, publish → fetch → double ack\n", rp.Name, rp.Conns, rp.Workers,
					fmtLat(rp.Steady.RunStart, true), fmtLat(rp.Steady.Completed, false), fmtRate(rp.BurstPerSec))
			}
			_ = tw.Flush()
			if s.RawErr != "" {
				w.printf("raw JetStream pools FAILED: %s\n", s.RawErr)
			}
		}
	}
	if r.ScaleErr != "" {
		w.printf("scale FAILED: %s\n", r.ScaleErr)
	}

	if len(r.Targets) > 0 {
		w.printf("\nTARGETS\n")
		tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "\tTARGET\tWANT\tMEASURED")
		for _, t := range r.Targets {
			mark := "MISSED"
			switch {
			case t.Missing:
				mark, t.Measured = "n/a", "not measured"
			case t.Met:
				mark = "met"
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", mark, t.Name, t.Want, t.Measured)
		}
		_ = tw.Flush()
	}
	var stalls []string
	for _, mr := range r.Modes {
		for _, f := range mr.Fleet {
			if f.Drain != nil && f.Drain.Stalled != "" {
				stalls = append(stalls, fmt.Sprintf("%s %s drain: %s", mr.Mode, f.Runner, f.Drain.Stalled))
			}
			if f.Steady != nil && f.Steady.Stalled != "" {
				stalls = append(stalls, fmt.Sprintf("%s %s steady: %s", mr.Mode, f.Runner, f.Steady.Stalled))
			}
		}
	}
	if len(stalls) > 0 {
		w.printf("\nSTALLS\n")
		for _, s := range stalls {
			w.printf("  %s\n", s)
		}
	}
	return w.err
}

func stageCols(s Stages) string {
	return strings.Join([]string{fmtLat(s.Ingest, false), fmtLat(s.Gate, false), fmtLat(s.Claim, false), fmtLat(s.Finish, false)}, "\t")
}

func writeCols(wr Writes) string {
	if wr.Jobs == 0 {
		return strings.Repeat("-\t", len(streamOrder)+1) + "-"
	}
	per := func(v uint64) string { return fmt.Sprintf("%.2f", float64(v)/float64(wr.Jobs)) }
	var cols []string
	var other uint64
	for n, v := range wr.ByStream {
		if !slices.Contains(streamOrder, n) {
			other += v
		}
	}
	for _, n := range streamOrder {
		cols = append(cols, per(wr.ByStream[n]))
	}
	cols = append(cols, per(other), fmt.Sprintf("%.2f", wr.PerJob))
	return strings.Join(cols, "\t")
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func errNote(what, err string) string {
	if err == "" {
		return ""
	}
	return what + " FAILED: " + err
}

func joinNotes(notes ...string) string {
	var out []string
	for _, n := range notes {
		if n != "" {
			out = append(out, n)
		}
	}
	return strings.Join(out, "; ")
}

type errWriter struct {
	w   io.Writer
	err error
}

func (e *errWriter) Write(p []byte) (int, error) {
	if e.err != nil {
		return 0, e.err
	}
	n, err := e.w.Write(p)
	e.err = err
	return n, err
}

func (e *errWriter) printf(format string, args ...any) { fmt.Fprintf(e, format, args...) }

// JSON views: durations in milliseconds, rates per second, explicit names.

type jsonLatency struct {
	P50 float64 `json:"p50_ms"`
	P99 float64 `json:"p99_ms"`
	Max float64 `json:"max_ms"`
	N   int     `json:"n"`
}

func ms(d time.Duration) float64 { return math.Round(float64(d)/float64(time.Microsecond)) / 1000 }

func us(d time.Duration) float64 { return math.Round(float64(d)/float64(time.Microsecond)*10) / 10 }

func latJSON(l Latency) jsonLatency { return jsonLatency{ms(l.P50), ms(l.P99), ms(l.Max), l.N} }

type jsonWrites struct {
	Jobs     int                `json:"jobs"`
	Total    uint64             `json:"total"`
	PerJob   float64            `json:"per_job"`
	ByStream map[string]float64 `json:"per_job_by_stream"`
}

func writesJSON(w Writes) jsonWrites {
	out := jsonWrites{Jobs: w.Jobs, Total: w.Total, PerJob: round3(w.PerJob), ByStream: map[string]float64{}}
	for n, v := range w.ByStream {
		if w.Jobs > 0 {
			out.ByStream[n] = round3(float64(v) / float64(w.Jobs))
		}
	}
	return out
}

func round3(v float64) float64 { return math.Round(v*1000) / 1000 }

func roundAll(vs []float64) []float64 {
	out := make([]float64, len(vs))
	for i, v := range vs {
		out[i] = round3(v)
	}
	return out
}

type jsonSteady struct {
	Offered   float64     `json:"offered_per_sec"`
	WindowMs  float64     `json:"window_ms"`
	Sent      int         `json:"sent"`
	Done      int         `json:"done"`
	RunStart  jsonLatency `json:"submit_to_run_start"`
	Completed jsonLatency `json:"submit_to_completed"`
}

func steadyJSON(s SteadyResult) jsonSteady {
	return jsonSteady{round3(s.Offered), ms(s.Duration), s.Sent, s.Done, latJSON(s.RunStart), latJSON(s.Completed)}
}

type jsonDrain struct {
	Jobs      int     `json:"jobs"`
	Workers   int     `json:"workers"`
	ElapsedMs float64 `json:"elapsed_ms"`
	PerSec    float64 `json:"per_sec"`
	CPUPerJob float64 `json:"cpu_us_per_job,omitempty"`
}

type jsonFleetDrain struct {
	Jobs               int        `json:"jobs"`
	Done               int        `json:"done"`
	Factories          int        `json:"factories"`
	Slots              int        `json:"slots"`
	IngestMs           float64    `json:"ingest_ms"`
	IngestPerSec       float64    `json:"ingest_per_sec"`
	UnroutableSettleMs float64    `json:"unroutable_settle_ms"`
	ElapsedMs          float64    `json:"elapsed_ms"`
	PerSec             float64    `json:"per_sec"`
	CPUPerJob          float64    `json:"cpu_us_per_job,omitempty"`
	IngestWrites       jsonWrites `json:"ingest_writes"`
	DrainWrites        jsonWrites `json:"drain_writes"`
	Stalled            string     `json:"stalled,omitempty"`
}

type jsonStages struct {
	Ingest jsonLatency `json:"ingest"`
	Gate   jsonLatency `json:"gate"`
	Claim  jsonLatency `json:"claim"`
	Finish jsonLatency `json:"finish"`
}

func stagesJSON(s Stages) jsonStages {
	return jsonStages{latJSON(s.Ingest), latJSON(s.Gate), latJSON(s.Claim), latJSON(s.Finish)}
}

type jsonFleetSteady struct {
	jsonSteady
	Stages     jsonStages `json:"stages"`
	Throughput float64    `json:"throughput_per_sec"`
	Writes     jsonWrites `json:"writes"`
	Stalled    string     `json:"stalled,omitempty"`
}

type jsonFleetRun struct {
	Runner         RunnerKind       `json:"runner"`
	Drain          *jsonFleetDrain  `json:"drain,omitempty"`
	DrainErr       string           `json:"drain_error,omitempty"`
	Steady         *jsonFleetSteady `json:"steady,omitempty"`
	SteadyErr      string           `json:"steady_error,omitempty"`
	DrainRatio     float64          `json:"drain_vs_raw"`
	RunStartRatio  float64          `json:"run_start_p50_vs_raw"`
	CompletedRatio float64          `json:"completed_p50_vs_raw"`
	FsyncRates     []float64        `json:"fsync_write_rates_per_sec,omitempty"`
	FsyncBound     float64          `json:"fsync_bound_per_sec,omitempty"`
	FsyncFraction  float64          `json:"fsync_bound_fraction,omitempty"`
}

type jsonFloor struct {
	Kind          FloorKind   `json:"kind"`
	Drain         *jsonDrain  `json:"drain,omitempty"`
	WritesPerJob  float64     `json:"drain_writes_per_job,omitempty"`
	DrainErr      string      `json:"drain_error,omitempty"`
	Steady        *jsonSteady `json:"steady,omitempty"`
	SteadyErr     string      `json:"steady_error,omitempty"`
	DrainRatio    float64     `json:"drain_vs_raw"`
	RunStartRatio float64     `json:"run_start_p50_vs_raw"`
}

type jsonMode struct {
	Mode         Mode           `json:"mode"`
	WriteRate    float64        `json:"write_rate_per_sec"`
	WriteRateErr string         `json:"write_rate_error,omitempty"`
	RawDrain     *jsonDrain     `json:"raw_drain,omitempty"`
	RawDrainErr  string         `json:"raw_drain_error,omitempty"`
	RawSteady    *jsonSteady    `json:"raw_steady,omitempty"`
	RawSteadyErr string         `json:"raw_steady_error,omitempty"`
	Floors       []jsonFloor    `json:"floors,omitempty"`
	Fleet        []jsonFleetRun `json:"fleet"`
}

type jsonMemory struct {
	Jobs               int     `json:"jobs"`
	IngestMs           float64 `json:"ingest_ms"`
	IngestPerSec       float64 `json:"ingest_per_sec"`
	MarkSettleMs       float64 `json:"unroutable_settle_ms"`
	IdleHeap           int64   `json:"idle_coordinator_heap_bytes"`
	Heap               int64   `json:"coordinator_heap_bytes"`
	PerJobBytes        float64 `json:"per_job_bytes"`
	ProcessRSSPerJob   float64 `json:"process_rss_per_job_bytes"`
	RebuildMs          float64 `json:"takeover_ms"`
	RebuildHeap        int64   `json:"takeover_heap_bytes"`
	RebuildPerJobBytes float64 `json:"takeover_per_job_bytes"`
}

type jsonDispatch struct {
	Name            string     `json:"name"`
	Pools           int        `json:"pools"`
	Factories       int        `json:"factories"`
	SlotsPerFactory int        `json:"slots_per_factory"`
	Backlog         int        `json:"held_jobs"`
	StartMs         float64    `json:"factories_start_ms"`
	Steady          jsonSteady `json:"steady"`
	Stages          jsonStages `json:"stages"`
	BurstJobs       int        `json:"burst_jobs"`
	BurstMs         float64    `json:"burst_ms"`
	BurstPerSec     float64    `json:"burst_per_sec"`
	Stalled         string     `json:"stalled,omitempty"`
}

type jsonRawPools struct {
	Name        string     `json:"name"`
	Pools       int        `json:"pools"`
	Conns       int        `json:"connections"`
	Workers     int        `json:"workers_per_connection"`
	Steady      jsonSteady `json:"steady"`
	BurstJobs   int        `json:"burst_jobs"`
	BurstMs     float64    `json:"burst_ms"`
	BurstPerSec float64    `json:"burst_per_sec"`
}

type jsonScale struct {
	Memory   jsonMemory     `json:"memory"`
	Dispatch []jsonDispatch `json:"dispatch"`
	Raw      []jsonRawPools `json:"raw_jetstream,omitempty"`
	RawErr   string         `json:"raw_jetstream_error,omitempty"`
}

type jsonTarget struct {
	Name     string `json:"name"`
	Want     string `json:"want"`
	Measured string `json:"measured"`
	Met      bool   `json:"met"`
	Missing  bool   `json:"not_measured,omitempty"`
}

type jsonConfig struct {
	Jobs        int     `json:"jobs"`
	Factories   int     `json:"factories"`
	Slots       int     `json:"slots"`
	Rate        float64 `json:"rate"`
	SteadyMs    float64 `json:"steady_ms"`
	Modes       []Mode  `json:"modes"`
	SkipExec    bool    `json:"skip_exec"`
	SkipFloor   bool    `json:"skip_floor"`
	SkipScale   bool    `json:"skip_scale"`
	ScaleJobs   int     `json:"scale_jobs"`
	Pools       int     `json:"pools"`
	ScaleMs     float64 `json:"scale_steady_ms"`
	BurstJobs   int     `json:"burst_jobs"`
	StallMs     float64 `json:"stall_after_ms"`
	RawWorkers  int     `json:"raw_workers"`
	PayloadSize int     `json:"raw_payload_bytes"`
}

type jsonReport struct {
	Started   time.Time    `json:"started"`
	ElapsedMs float64      `json:"elapsed_ms"`
	Machine   Machine      `json:"machine"`
	Command   string       `json:"command,omitempty"`
	Config    jsonConfig   `json:"config"`
	Modes     []jsonMode   `json:"modes"`
	Scale     *jsonScale   `json:"scale,omitempty"`
	ScaleErr  string       `json:"scale_error,omitempty"`
	Targets   []jsonTarget `json:"targets"`
	Failed    bool         `json:"failed"`
}

// MarshalJSON renders the report for machines: durations in ms, rates per
// second, writes per job by stream.
func (r *Report) MarshalJSON() ([]byte, error) {
	c := r.Config
	out := jsonReport{Started: r.Started, ElapsedMs: ms(r.Elapsed), Machine: r.Machine, Command: r.Command,
		Config: jsonConfig{Jobs: c.Jobs, Factories: c.Factories, Slots: c.Slots, Rate: c.Rate, SteadyMs: ms(c.SteadyFor),
			Modes: c.Modes, SkipExec: c.SkipExec, SkipFloor: c.SkipFloor, SkipScale: c.SkipScale, ScaleJobs: c.Scale.Jobs, Pools: c.Scale.Pools,
			ScaleMs: ms(c.Scale.For), BurstJobs: c.Scale.BurstJobs, StallMs: ms(c.StallAfter), RawWorkers: c.Factories * c.Slots,
			PayloadSize: DefaultPayloadBytes},
		ScaleErr: r.ScaleErr, Failed: r.Failed(), Modes: []jsonMode{}, Targets: []jsonTarget{}}
	for _, m := range r.Modes {
		jm := jsonMode{Mode: m.Mode, WriteRate: round3(m.WriteRate), WriteRateErr: m.WriteRateErr, RawDrainErr: m.RawDrainErr,
			RawSteadyErr: m.RawSteadyErr, Fleet: []jsonFleetRun{}}
		if d := m.RawDrain; d != nil {
			jm.RawDrain = &jsonDrain{d.Jobs, d.Workers, ms(d.Elapsed), round3(d.PerSec), us(cpuPerJob(d.CPU, d.Jobs))}
		}
		if s := m.RawSteady; s != nil {
			v := steadyJSON(*s)
			jm.RawSteady = &v
		}
		for _, f := range m.Floors {
			jf := jsonFloor{Kind: f.Kind, DrainErr: f.DrainErr, SteadyErr: f.SteadyErr, DrainRatio: round3(f.DrainRatio),
				RunStartRatio: round3(f.RunStartRatio)}
			if d := f.Drain; d != nil {
				jf.Drain = &jsonDrain{d.Jobs, d.Workers, ms(d.Elapsed), round3(d.PerSec), us(cpuPerJob(d.CPU, d.Jobs))}
				jf.WritesPerJob = round3(d.WritesPerJob)
			}
			if s := f.Steady; s != nil {
				v := steadyJSON(*s)
				jf.Steady = &v
			}
			jm.Floors = append(jm.Floors, jf)
		}
		for _, f := range m.Fleet {
			jf := jsonFleetRun{Runner: f.Runner, DrainErr: f.DrainErr, SteadyErr: f.SteadyErr, DrainRatio: round3(f.DrainRatio),
				RunStartRatio: round3(f.RunStartRatio), CompletedRatio: round3(f.CompletedRatio),
				FsyncRates: roundAll(f.FsyncRates), FsyncBound: round3(f.FsyncBound), FsyncFraction: round3(f.FsyncFraction)}
			if d := f.Drain; d != nil {
				jf.Drain = &jsonFleetDrain{Jobs: d.Jobs, Done: d.Done, Factories: d.Factories, Slots: d.Slots,
					IngestMs: ms(d.IngestElapsed), IngestPerSec: round3(d.IngestPerSec), UnroutableSettleMs: ms(d.UnroutableSettling),
					ElapsedMs: ms(d.Elapsed), PerSec: round3(d.PerSec), CPUPerJob: us(cpuPerJob(d.CPU, d.Done)), IngestWrites: writesJSON(d.IngestWrites),
					DrainWrites: writesJSON(d.DrainWrites), Stalled: d.Stalled}
			}
			if s := f.Steady; s != nil {
				jf.Steady = &jsonFleetSteady{jsonSteady: steadyJSON(s.SteadyResult), Stages: stagesJSON(s.Stages), Throughput: round3(s.Throughput),
					Writes: writesJSON(s.Writes), Stalled: s.Stalled}
			}
			jm.Fleet = append(jm.Fleet, jf)
		}
		out.Modes = append(out.Modes, jm)
	}
	if s := r.Scale; s != nil {
		m := s.Memory
		js := &jsonScale{Memory: jsonMemory{Jobs: m.Jobs, IngestMs: ms(m.IngestElapsed), IngestPerSec: round3(m.IngestPerSec),
			MarkSettleMs: ms(m.MarkSettling), IdleHeap: m.IdleHeap, Heap: m.Heap, PerJobBytes: round3(m.PerJobBytes),
			ProcessRSSPerJob: round3(m.ProcessRSSPerJob), RebuildMs: ms(m.RebuildElapsed), RebuildHeap: m.RebuildHeap,
			RebuildPerJobBytes: round3(m.RebuildPerJobBytes)}, Dispatch: []jsonDispatch{}}
		for _, d := range s.Dispatch {
			js.Dispatch = append(js.Dispatch, jsonDispatch{Name: d.Name, Pools: d.Pools, Factories: d.Factories,
				SlotsPerFactory: d.SlotsPerFactory, Backlog: d.Backlog, StartMs: ms(d.StartElapsed), Steady: steadyJSON(d.Steady), Stages: stagesJSON(d.Stages),
				BurstJobs: d.BurstJobs, BurstMs: ms(d.BurstElapsed), BurstPerSec: round3(d.BurstPerSec), Stalled: d.Stalled})
		}
		for _, rp := range s.Raw {
			js.Raw = append(js.Raw, jsonRawPools{Name: rp.Name, Pools: rp.Pools, Conns: rp.Conns, Workers: rp.Workers,
				Steady: steadyJSON(rp.Steady), BurstJobs: rp.BurstJobs, BurstMs: ms(rp.BurstElapsed), BurstPerSec: round3(rp.BurstPerSec)})
		}
		js.RawErr = s.RawErr
		out.Scale = js
	}
	for _, t := range r.Targets {
		out.Targets = append(out.Targets, jsonTarget(t))
	}
	return json.Marshal(out)
}
