package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"
)

// TestRunSmall runs the whole of `fleet bench` with tiny sizes: both sync
// modes, the no-op runner, and the scale cases with 20 pools and 1,000
// held jobs. Run the exec runner with `fleet bench --quick`.
func TestRunSmall(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	defer func(d time.Duration) { idleSettle = d }(idleSettle)
	idleSettle = 200 * time.Millisecond
	cfg := Config{
		Jobs: 200, Factories: 2, Slots: 2, Rate: 200, SteadyFor: 500 * time.Millisecond,
		Modes: []Mode{ModeLazy, ModeAlways}, SkipExec: true, StallAfter: 5 * time.Second,
		Scale:    ScaleConfig{Jobs: 1000, Pools: 20, For: 500 * time.Millisecond, BurstJobs: 100, CacheSleep: 10 * time.Millisecond},
		Progress: t.Logf,
	}
	rep, err := Run(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	var table bytes.Buffer
	if err := rep.WriteTable(&table); err != nil {
		t.Fatal(err)
	}
	t.Logf("\n%s", table.String())

	if len(rep.Modes) != 2 {
		t.Fatalf("%d modes, want 2", len(rep.Modes))
	}
	for _, m := range rep.Modes {
		if m.WriteRateErr != "" || m.RawDrainErr != "" || m.RawSteadyErr != "" {
			t.Fatalf("%s: raw baseline failed: %q %q %q", m.Mode, m.WriteRateErr, m.RawDrainErr, m.RawSteadyErr)
		}
		if m.WriteRate <= 0 || m.RawDrain.Jobs != 200 || m.RawSteady.Done != 100 {
			t.Errorf("%s: raw baseline %v %+v %+v", m.Mode, m.WriteRate, m.RawDrain, m.RawSteady)
		}
		wantFloors := 0
		if m.Mode == ModeLazy {
			wantFloors = len(FloorKinds)
		}
		if len(m.Floors) != wantFloors {
			t.Errorf("%s: %d floors, want %d", m.Mode, len(m.Floors), wantFloors)
		}
		for _, f := range m.Floors {
			if f.DrainErr != "" || f.SteadyErr != "" || f.Drain == nil || f.Steady == nil {
				t.Errorf("%s: floor %s failed: %q %q", m.Mode, f.Kind, f.DrainErr, f.SteadyErr)
			} else if f.DrainRatio <= 0 || f.RunStartRatio <= 0 || f.Steady.Done != 100 {
				t.Errorf("%s: floor %s: %+v", m.Mode, f.Kind, f)
			}
		}
		if len(m.Fleet) != 1 || m.Fleet[0].Runner != RunnerNoop {
			t.Fatalf("%s: fleet runs %+v, want one no-op run", m.Mode, m.Fleet)
		}
		f := m.Fleet[0]
		if f.DrainErr != "" || f.SteadyErr != "" {
			t.Fatalf("%s: fleet failed: %q %q", m.Mode, f.DrainErr, f.SteadyErr)
		}
		// A stall is a coordinator finding, not a failure of the bench.
		if d := f.Drain; d.Stalled == "" {
			if d.Done != 200 || d.PerSec <= 0 || d.IngestPerSec <= 0 || f.DrainRatio <= 0 {
				t.Errorf("%s: drain %+v ratio %v", m.Mode, d, f.DrainRatio)
			}
			// Dispatch, claim and completion: 3 record writes, 3 events, 1 pool message.
			if d.DrainWrites.PerJob < 7 || d.DrainWrites.PerJob > 8 {
				t.Errorf("%s: drain writes per job %.2f, want about 7: %+v", m.Mode, d.DrainWrites.PerJob, d.DrainWrites.ByStream)
			}
		} else {
			t.Logf("%s: fleet drain stalled: %s", m.Mode, d.Stalled)
		}
		if s := f.Steady; s.Stalled == "" {
			if s.Sent != 100 || s.Done != 100 || s.RunStart.N != 100 || s.Completed.N != 100 {
				t.Errorf("%s: steady %+v", m.Mode, s)
			}
			if s.RunStart.P50 <= 0 || s.Completed.P50 < s.RunStart.P50 {
				t.Errorf("%s: steady latencies run-start %+v completed %+v", m.Mode, s.RunStart, s.Completed)
			}
			// A job's life: submission, 4 record writes, 4 events, 1 pool message.
			if s.Writes.PerJob < 10 || s.Writes.PerJob > 11 {
				t.Errorf("%s: steady writes per job %.2f, want about 10: %+v", m.Mode, s.Writes.PerJob, s.Writes.ByStream)
			}
		} else {
			t.Logf("%s: fleet steady stalled: %s", m.Mode, s.Stalled)
		}
		if m.Mode == ModeAlways && (len(f.FsyncRates) != 2 || f.FsyncBound <= 0) {
			t.Errorf("always: want an fsync bound from write rates sampled before and after the drain: %+v", f)
		}
		if m.Mode == ModeLazy && len(f.FsyncRates) != 0 {
			t.Errorf("lazy: write rates sampled around the drain: %v", f.FsyncRates)
		}
	}

	if rep.ScaleErr != "" {
		t.Fatalf("scale: %s", rep.ScaleErr)
	}
	sc := rep.Scale
	if sc.Memory.Jobs != 1000 || sc.Memory.Heap == 0 || sc.Memory.RebuildElapsed <= 0 {
		t.Errorf("memory %+v", sc.Memory)
	}
	if sc.RawErr != "" || len(sc.Raw) != 2 || sc.Raw[1].Pools != 20 || sc.Raw[1].Conns != 20 || sc.Raw[0].Steady.Done != 100 || sc.Raw[1].BurstPerSec <= 0 {
		t.Errorf("raw pools %q %+v", sc.RawErr, sc.Raw)
	}
	if len(sc.Dispatch) != 5 {
		t.Fatalf("%d dispatch cases, want 5", len(sc.Dispatch))
	}
	for _, d := range sc.Dispatch {
		if d.Stalled != "" {
			t.Logf("%s: stalled: %s", d.Name, d.Stalled)
			continue
		}
		if d.Steady.Done != 100 || d.BurstJobs != 100 || d.BurstPerSec <= 0 {
			t.Errorf("dispatch %+v", d)
		}
	}
	if sc.Dispatch[1].Factories != 20 || !strings.Contains(sc.Dispatch[2].Name, "any job") || sc.Dispatch[4].Backlog != 1000 {
		t.Errorf("dispatch cases %+v", sc.Dispatch)
	}
	if len(rep.Targets) != 5 {
		t.Errorf("%d targets, want 5", len(rep.Targets))
	}
	for _, tg := range rep.Targets {
		if tg.Missing {
			t.Errorf("target %q not measured", tg.Name)
		}
	}

	data, err := json.Marshal(rep)
	if err != nil {
		t.Fatal(err)
	}
	var back struct {
		Modes []struct {
			Mode   string `json:"mode"`
			Floors []struct {
				Kind  string `json:"kind"`
				Drain struct {
					PerSec float64 `json:"per_sec"`
				} `json:"drain"`
			} `json:"floors"`
			Fleet []struct {
				Steady struct {
					RunStart struct {
						P50 float64 `json:"p50_ms"`
					} `json:"submit_to_run_start"`
				} `json:"steady"`
			} `json:"fleet"`
		} `json:"modes"`
		Targets []map[string]any `json:"targets"`
	}
	if err := json.Unmarshal(data, &back); err != nil {
		t.Fatal(err)
	}
	if len(back.Modes) != 2 || back.Modes[0].Mode != "lazy" || len(back.Targets) != 5 || back.Modes[0].Fleet[0].Steady.RunStart.P50 <= 0 ||
		len(back.Modes[0].Floors) != len(FloorKinds) || back.Modes[0].Floors[0].Kind != "design" || back.Modes[0].Floors[0].Drain.PerSec <= 0 {
		t.Errorf("JSON %s", data)
	}
	for _, want := range []string{"END TO END", "WRITES PER FINISHED JOB", "SCALE", "TARGETS", "fleet, no-op runner", "floor: the design", "the design's floor", "raw JetStream, 20 pools"} {
		if !strings.Contains(table.String(), want) {
			t.Errorf("table lacks %q", want)
		}
	}
}

func TestParseModes(t *testing.T) {
	for in, want := range map[string]string{"lazy": "lazy", "always,lazy": "always,lazy", " Lazy , ALWAYS ,": "lazy,always"} {
		got, err := ParseModes(in)
		var s []string
		for _, m := range got {
			s = append(s, string(m))
		}
		if err != nil || strings.Join(s, ",") != want {
			t.Errorf("ParseModes(%q) = %v, %v; want %s", in, got, err, want)
		}
	}
	for _, in := range []string{"", "fast", "lazy,never"} {
		if _, err := ParseModes(in); err == nil {
			t.Errorf("ParseModes(%q): want error", in)
		}
	}
}

func TestEventStates(t *testing.T) {
	from, to, ok := eventStates([]byte(`{"job_id":"kabc","product":"p","from":"","to":"queued","at":"x","rev":1}`))
	if !ok || from != "" || to != "queued" {
		t.Errorf("creation: %q %q %v", from, to, ok)
	}
	from, to, ok = eventStates([]byte(`{"job_id":"kabc","product":"p","from":"running","to":"succeeded","reason":"\"to\":\"x\""}`))
	if !ok || from != "running" || to != "succeeded" {
		t.Errorf("completion: %q %q %v", from, to, ok)
	}
	if _, _, ok := eventStates([]byte(`{"job_id":"kabc"}`)); ok {
		t.Error("no states: want !ok")
	}
}

func TestDiffWrites(t *testing.T) {
	w := diffWrites(map[string]uint64{"A": 5, "B": 7}, map[string]uint64{"A": 25, "B": 7, "C": 10}, 10)
	if w.Total != 30 || w.PerJob != 3 || len(w.ByStream) != 2 || w.ByStream["A"] != 20 || w.ByStream["C"] != 10 {
		t.Errorf("diffWrites = %+v", w)
	}
	if w := diffWrites(nil, map[string]uint64{"A": 1}, 0); w.PerJob != 0 || w.Total != 1 {
		t.Errorf("no jobs: %+v", w)
	}
}

func TestFormat(t *testing.T) {
	for v, want := range map[float64]string{0: "-", 7: "7", 1234: "1,234", 45678.4: "45,678", 1234567: "1,234,567"} {
		if got := fmtRate(v); got != want {
			t.Errorf("fmtRate(%v) = %q, want %q", v, got, want)
		}
	}
	if got := fmtDur(1500 * time.Microsecond); got != "1.50 ms" {
		t.Errorf("fmtDur = %q", got)
	}
}
