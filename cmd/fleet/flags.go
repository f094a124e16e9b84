package main

import (
	"encoding/json"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/urfave/cli/v2"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/agentqueue/fleet/broker"
	"github.com/agentqueue/fleet/coordinator"
	"github.com/agentqueue/fleet/job"
)

func env(name string) []string { return []string{"AQ_FLEET_" + name} }

// connectFlags say how to reach NATS.
func connectFlags() []cli.Flag {
	return []cli.Flag{
		&cli.StringFlag{Name: "url", Aliases: []string{"s"}, Value: broker.DefaultURL, EnvVars: env("URL"),
			Usage: "NATS server URL(s), comma-separated"},
		&cli.StringFlag{Name: "creds", EnvVars: env("CREDS"), Usage: "NATS credentials file"},
		&cli.StringFlag{Name: "tls-cert", EnvVars: env("TLS_CERT"), Usage: "client TLS certificate"},
		&cli.StringFlag{Name: "tls-key", EnvVars: env("TLS_KEY"), Usage: "client TLS key"},
		&cli.StringFlag{Name: "tls-ca", EnvVars: env("TLS_CA"), Usage: "CA bundle to verify the server"},
	}
}

func logFlags() []cli.Flag {
	return []cli.Flag{
		&cli.StringFlag{Name: "log-level", Value: "info", EnvVars: env("LOG_LEVEL"), Usage: "debug, info, warn or error"},
		&cli.StringFlag{Name: "log-format", Value: "console", EnvVars: env("LOG_FORMAT"), Usage: "console or json"},
	}
}

func jsonFlag() cli.Flag {
	return &cli.BoolFlag{Name: "json", EnvVars: env("JSON"), Usage: "print JSON for machines"}
}

func brokerConfig(c *cli.Context, name string) broker.Config {
	return broker.Config{URLs: c.String("url"), CredsFile: c.String("creds"), TLSCert: c.String("tls-cert"),
		TLSKey: c.String("tls-key"), TLSCA: c.String("tls-ca"), Name: name}
}

func connect(c *cli.Context, name string, log *zap.Logger) (*broker.Broker, error) {
	return broker.Connect(brokerConfig(c, name), log)
}

// newLogger builds the one logger of the process.
func newLogger(c *cli.Context) (*zap.Logger, error) {
	var lvl zapcore.Level
	if err := lvl.Set(c.String("log-level")); err != nil {
		return nil, fmt.Errorf("--log-level: %w", err)
	}
	cfg := zap.NewProductionConfig()
	cfg.Level = zap.NewAtomicLevelAt(lvl)
	cfg.Sampling = &zap.SamplingConfig{Initial: 100, Thereafter: 100} // rate-limits repeated lines in loops
	switch c.String("log-format") {
	case "json":
	case "console":
		cfg.Encoding = "console"
		cfg.EncoderConfig = zap.NewDevelopmentEncoderConfig()
		cfg.EncoderConfig.EncodeTime = zapcore.TimeEncoderOfLayout("15:04:05.000")
	default:
		return nil, fmt.Errorf("--log-format must be console or json, not %q", c.String("log-format"))
	}
	cfg.DisableStacktrace = true
	return cfg.Build()
}

// leaseFlags configure leases, shared by coordinator and up.
func coordinatorFlags() []cli.Flag {
	return []cli.Flag{
		&cli.StringFlag{Name: "gate", Value: "on", EnvVars: env("GATE"),
			Usage: "admission gate: on (hold the backlog, release a job when a pool can start it) or off (release at once, FIFO pool queues)"},
		&cli.IntFlag{Name: "prefetch", Value: 1, EnvVars: env("PREFETCH"), Usage: "jobs the gate lets wait in a pool beyond its free slots"},
		&cli.DurationFlag{Name: "lease-ttl", Value: coordinator.DefaultLeaseTTL, EnvVars: env("LEASE_TTL"),
			Usage: "lease of a running job (ack wait); a factory silent this long loses its job"},
		&cli.IntFlag{Name: "lease-renew-sec", Value: int(coordinator.DefaultRenewEvery / time.Second), EnvVars: env("LEASE_RENEW_SEC"),
			Usage: "seconds between a factory's lease renewals; keep well under --lease-ttl"},
		&cli.DurationFlag{Name: "retry-base", Value: job.DefaultBackoff.Base, EnvVars: env("RETRY_BASE"), Usage: "first retry backoff; doubles per attempt"},
		&cli.DurationFlag{Name: "retry-max", Value: job.DefaultBackoff.Max, EnvVars: env("RETRY_MAX"), Usage: "longest retry backoff"},
		&cli.StringFlag{Name: "pool-state", Value: "memory", EnvVars: env("POOL_STATE"),
			Usage: "where new pool consumers keep their delivery state: memory (far cheaper with many pools; rebuilt after a broker restart) or file"},
		&cli.IntFlag{Name: "replicas", Value: 1, EnvVars: env("REPLICAS"), Usage: "stream and bucket replicas (3 on a 3-node cluster)"},
	}
}

func coordinatorConfig(c *cli.Context) (coordinator.Config, error) {
	cfg := coordinator.Config{
		Prefetch: c.Int("prefetch"), LeaseTTL: c.Duration("lease-ttl"),
		RenewEvery: time.Duration(c.Int("lease-renew-sec")) * time.Second,
		Backoff:    job.Backoff{Base: c.Duration("retry-base"), Max: c.Duration("retry-max")},
		HTTPAddr:   c.String("http"),
	}
	switch c.String("pool-state") {
	case "memory":
	case "file":
		cfg.PoolStateOnDisk = true
	default:
		return cfg, fmt.Errorf("--pool-state must be memory or file, not %q", c.String("pool-state"))
	}
	if cfg.Prefetch == 0 {
		cfg.Prefetch = -1 // explicit 0 on the command line means none
	}
	cfg.Topology.Replicas = c.Int("replicas")
	switch strings.ToLower(c.String("gate")) {
	case "on", "true", "1":
	case "off", "false", "0":
		cfg.GateOff = true
	default:
		return cfg, fmt.Errorf("--gate must be on or off, not %q", c.String("gate"))
	}
	return cfg, nil
}

func printJSON(v any) error {
	enc := json.NewEncoder(os.Stdout)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}
