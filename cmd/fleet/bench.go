package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"runtime/pprof"
	"strings"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/agentqueue/fleet/bench"
)

func benchCommand() *cli.Command {
	return &cli.Command{
		Name:  "bench",
		Usage: "measure the fleet end to end against a raw JetStream work queue, on embedded brokers",
		Description: "Runs everything in this process, each measurement on a fresh embedded broker in a temporary\n" +
			"directory: per sync mode the raw JetStream baseline (write rate, drain, steady), then the fleet\n" +
			"(coordinator + factories) with a no-op runner and with the exec runner running `true`; then the\n" +
			"scale measurements (coordinator memory per queued job, dispatch with many pools). Prints a table,\n" +
			"or JSON with --json. Run a binary built without -race. See BENCHMARKS.md.",
		Flags: []cli.Flag{
			&cli.IntFlag{Name: "jobs", Aliases: []string{"n"}, Value: bench.DefaultJobs, EnvVars: env("BENCH_JOBS"),
				Usage: "jobs queued then drained in each drain measurement"},
			&cli.IntFlag{Name: "factories", Value: bench.DefaultFactories, EnvVars: env("BENCH_FACTORIES"),
				Usage: "fleet factories; the raw baseline gets factories×slots workers"},
			&cli.IntFlag{Name: "slots", Value: bench.DefaultSlots, EnvVars: env("BENCH_SLOTS"), Usage: "slots per factory"},
			&cli.Float64Flag{Name: "rate", Value: bench.DefaultRate, EnvVars: env("BENCH_RATE"), Usage: "offered jobs/s of the steady measurements"},
			&cli.DurationFlag{Name: "duration", Value: bench.DefaultSteadyFor, EnvVars: env("BENCH_DURATION"),
				Usage: "length of each steady measurement"},
			&cli.StringFlag{Name: "modes", Value: "lazy,always", EnvVars: env("BENCH_MODES"),
				Usage: "broker sync modes: lazy (nats default) and/or always (fsync before ack, fleet's default)"},
			&cli.BoolFlag{Name: "skip-floor", EnvVars: env("BENCH_SKIP_FLOOR"), Usage: "skip the design floors (the design's JetStream work done by bare code, no fleet)"},
			&cli.BoolFlag{Name: "skip-exec", EnvVars: env("BENCH_SKIP_EXEC"), Usage: "skip the exec-runner measurements (jobs running true as a child process)"},
			&cli.BoolFlag{Name: "skip-scale", EnvVars: env("BENCH_SKIP_SCALE"), Usage: "skip the scale measurements"},
			&cli.IntFlag{Name: "scale-jobs", Value: bench.DefaultScaleJobs, EnvVars: env("BENCH_SCALE_JOBS"),
				Usage: "queued jobs for the coordinator memory measurement (and the backlog of the dispatch cases)"},
			&cli.IntFlag{Name: "pools", Value: bench.DefaultPools, EnvVars: env("BENCH_POOLS"),
				Usage: "pools (one factory and NATS connection each) of the wide dispatch case"},
			&cli.DurationFlag{Name: "scale-duration", Value: bench.DefaultScaleFor, EnvVars: env("BENCH_SCALE_DURATION"),
				Usage: "steady window of each scale dispatch case"},
			&cli.IntFlag{Name: "burst", Value: bench.DefaultBurstJobs, EnvVars: env("BENCH_BURST"),
				Usage: "jobs submitted at once in each scale dispatch case"},
			&cli.DurationFlag{Name: "stall-after", Value: 20 * time.Second, EnvVars: env("BENCH_STALL_AFTER"),
				Usage: "record a stall and move on when no job finishes for this long"},
			&cli.BoolFlag{Name: "quick", EnvVars: env("BENCH_QUICK"),
				Usage: "a smoke run in under two minutes: 2000 jobs, 2s steady, 10000 held jobs, 100 pools (explicit flags win)"},
			&cli.StringFlag{Name: "cpuprofile", EnvVars: env("BENCH_CPUPROFILE"),
				Usage: "write a CPU profile of the whole run to this file (labels: phase, part)"},
			&cli.StringFlag{Name: "log-level", Value: "error", EnvVars: env("BENCH_LOG_LEVEL"),
				Usage: "log level of the coordinator and factories: debug, info, warn or error"},
			&cli.StringFlag{Name: "log-format", Value: "console", EnvVars: env("BENCH_LOG_FORMAT"), Usage: "console or json"},
			&cli.BoolFlag{Name: "json", EnvVars: []string{"AQ_FLEET_BENCH_JSON", "AQ_FLEET_JSON"}, Usage: "print JSON for machines"},
			&cli.StringFlag{Name: "json-file", EnvVars: env("BENCH_JSON_FILE"), Usage: "also write the JSON report to this file"},
			&cli.BoolFlag{Name: "quiet", Aliases: []string{"q"}, EnvVars: env("BENCH_QUIET"), Usage: "no progress lines on stderr"},
		},
		Action: runBench,
	}
}

func runBench(c *cli.Context) error {
	if c.NArg() > 0 {
		return fmt.Errorf("bench takes no arguments, got %q", c.Args().Slice())
	}
	modes, err := bench.ParseModes(c.String("modes"))
	if err != nil {
		return err
	}
	log, err := newLogger(c)
	if err != nil {
		return err
	}
	defer func() { _ = log.Sync() }()
	cfg := bench.Config{
		Jobs: c.Int("jobs"), Factories: c.Int("factories"), Slots: c.Int("slots"), Rate: c.Float64("rate"),
		SteadyFor: c.Duration("duration"), Modes: modes, SkipExec: c.Bool("skip-exec"), SkipFloor: c.Bool("skip-floor"), SkipScale: c.Bool("skip-scale"),
		Scale: bench.ScaleConfig{Jobs: c.Int("scale-jobs"), Pools: c.Int("pools"), For: c.Duration("scale-duration"),
			BurstJobs: c.Int("burst")},
		StallAfter: c.Duration("stall-after"), Log: log,
	}
	if c.Bool("quick") {
		quick := func(name string, set func()) {
			if !c.IsSet(name) {
				set()
			}
		}
		quick("jobs", func() { cfg.Jobs = 2000 })
		quick("duration", func() { cfg.SteadyFor = 2 * time.Second })
		quick("scale-jobs", func() { cfg.Scale.Jobs = 10000 })
		quick("pools", func() { cfg.Scale.Pools = 100 })
		quick("scale-duration", func() { cfg.Scale.For = 2 * time.Second })
		quick("burst", func() { cfg.Scale.BurstJobs = 1000 })
	}
	if cfg.Jobs < 1 || cfg.Factories < 1 || cfg.Slots < 1 || cfg.Rate <= 0 || cfg.SteadyFor <= 0 ||
		cfg.Scale.Jobs < 1 || cfg.Scale.Pools < 1 || cfg.Scale.For <= 0 || cfg.Scale.BurstJobs < 1 || cfg.StallAfter <= 0 {
		return errors.New("--jobs, --factories, --slots, --rate, --duration, --scale-jobs, --pools, --scale-duration, --burst and --stall-after must be positive")
	}
	if !c.Bool("quiet") {
		cfg.Progress = func(format string, args ...any) { fmt.Fprintf(os.Stderr, format+"\n", args...) }
	}
	if path := c.String("cpuprofile"); path != "" {
		f, err := os.Create(path)
		if err != nil {
			return fmt.Errorf("--cpuprofile: %w", err)
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return fmt.Errorf("--cpuprofile: %w", err)
		}
		defer pprof.StopCPUProfile()
	}

	rep, err := bench.Run(c.Context, cfg)
	if rep == nil {
		return err
	}
	rep.Command = strings.Join(os.Args, " ")
	if path := c.String("json-file"); path != "" {
		data, jerr := json.MarshalIndent(rep, "", "  ")
		if jerr == nil {
			jerr = os.WriteFile(path, append(data, '\n'), 0o644)
		}
		if jerr != nil {
			return fmt.Errorf("--json-file: %w", jerr)
		}
	}
	if c.Bool("json") {
		if perr := printJSON(rep); perr != nil {
			return perr
		}
	} else if perr := rep.WriteTable(os.Stdout); perr != nil {
		return perr
	}
	if err != nil {
		return err
	}
	if rep.Failed() {
		return cli.Exit("fleet bench: a measurement failed or stalled (see above)", 1)
	}
	return nil
}
