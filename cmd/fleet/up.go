package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/urfave/cli/v2"
	"go.uber.org/zap"

	"github.com/agentqueue/fleet/broker"
	"github.com/agentqueue/fleet/coordinator"
	"github.com/agentqueue/fleet/factory"
)

func upCommand() *cli.Command {
	return &cli.Command{
		Name:  "up",
		Usage: "run a whole fleet in one process: embedded broker, coordinator and local factories",
		Description: "Data is kept under --data-dir, so jobs survive a restart. Ctrl-C stops it cleanly:\n" +
			"factories finish (or give back) their jobs, then the coordinator, then the broker.",
		Flags: append(append(append([]cli.Flag{
			&cli.StringFlag{Name: "data-dir", Value: ".fleet", EnvVars: env("DATA_DIR"), Usage: "where the embedded broker keeps its data"},
			&cli.StringFlag{Name: "host", Value: "127.0.0.1", EnvVars: env("HOST"), Usage: "address the broker listens on"},
			&cli.IntFlag{Name: "port", Value: 4222, EnvVars: env("PORT"), Usage: "broker client port (-1 for a random one)"},
			&cli.StringFlag{Name: "http", Value: "127.0.0.1:8080", EnvVars: env("HTTP"), Usage: "coordinator HTTP address (queue-state, metrics)"},
			&cli.IntFlag{Name: "monitor-port", EnvVars: env("MONITOR_PORT"), Usage: "expose NATS monitoring (/varz, /jsz) on this port; 0 = off"},
			&cli.BoolFlag{Name: "lazy-sync", EnvVars: env("LAZY_SYNC"),
				Usage: "do not fsync before acknowledging writes (faster; a power loss can drop acknowledged jobs)"},
			&cli.IntFlag{Name: "factories", Value: 2, EnvVars: env("FACTORIES"), Usage: "local factories to run"},
			&cli.IntFlag{Name: "slots", Value: 2, EnvVars: env("SLOTS"), Usage: "jobs each local factory runs at once"},
			&cli.StringSliceFlag{Name: "cap", EnvVars: env("CAPS"), Usage: "capability of the local factories (key=value or bare key), repeatable"},
			&cli.DurationFlag{Name: "grace", Value: 30 * time.Second, EnvVars: env("GRACE"), Usage: "how long running jobs may finish on shutdown"},
		}, coordinatorFlags()...), logFlags()...), jsonFlag()),
		Action: runUp,
	}
}

func runUp(c *cli.Context) error {
	log, err := newLogger(c)
	if err != nil {
		return err
	}
	defer func() { _ = log.Sync() }()
	dir, err := filepath.Abs(c.String("data-dir"))
	if err != nil {
		return err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("data dir: %w", err)
	}
	srv, err := broker.StartEmbedded(broker.EmbeddedConfig{StoreDir: dir, Host: c.String("host"), Port: c.Int("port"),
		LazySync: c.Bool("lazy-sync"), MonitorPort: c.Int("monitor-port")})
	if err != nil {
		return err
	}
	defer srv.Stop()
	url := srv.URL()
	ccfg, err := coordinatorConfig(c)
	if err != nil {
		return err
	}
	cb, err := broker.Connect(broker.Config{URLs: url, Name: "fleet-coordinator"}, log)
	if err != nil {
		return err
	}
	defer cb.Close()
	coord, err := coordinator.New(cb, ccfg, log)
	if err != nil {
		return err
	}
	// The coordinator outlives the factories: it stops after they have.
	cctx, stopCoord := context.WithCancel(context.Background())
	defer stopCoord()
	cdone := make(chan error, 1)
	go func() { cdone <- coord.Run(cctx) }()
	select {
	case <-coord.Ready():
	case err := <-cdone:
		return err
	}

	var wg sync.WaitGroup
	errs := make(chan error, c.Int("factories"))
	var pool string
	for i := range c.Int("factories") {
		fb, err := broker.Connect(broker.Config{URLs: url, Name: fmt.Sprintf("fleet-factory-%d", i+1)}, log)
		if err != nil {
			return err
		}
		defer fb.Close()
		fa, err := factory.New(fb, factory.Config{Slots: c.Int("slots"), Caps: c.StringSlice("cap"), Grace: c.Duration("grace")}, log)
		if err != nil {
			return err
		}
		pool = fa.Pool()
		wg.Go(func() {
			if err := fa.Run(c.Context); err != nil {
				errs <- err
			}
		})
	}
	info := map[string]any{"nats_url": url, "http": "http://" + coord.HTTPAddr(), "data_dir": dir,
		"factories": c.Int("factories"), "slots": c.Int("slots"), "pool": pool, "monitor": srv.MonitorURL()}
	if c.Bool("json") {
		_ = printJSON(info)
	} else {
		fmt.Printf("fleet is up\n  NATS:        %s\n  HTTP:        %s (GET /fleet/queue-state, /fleet/metrics)\n  data:        %s\n  factories:   %d × %d slots in pool %s\n",
			url, info["http"], dir, c.Int("factories"), c.Int("slots"), pool)
		if m := srv.MonitorURL(); m != "" {
			fmt.Printf("  monitoring:  %s\n", m)
		}
		fmt.Printf("Try: fleet submit --wait -- echo hello     (Ctrl-C stops the fleet)\n")
	}
	<-c.Context.Done()
	log.Info("stopping: factories first, then the coordinator, then the broker")
	wg.Wait()
	stopCoord()
	if err := <-cdone; err != nil {
		log.Error("coordinator", zap.Error(err))
	}
	close(errs)
	for err := range errs {
		return err
	}
	return nil
}
