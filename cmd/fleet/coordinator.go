package main

import (
	"github.com/urfave/cli/v2"

	"github.com/agentqueue/fleet/coordinator"
)

func coordinatorCommand() *cli.Command {
	return &cli.Command{
		Name:  "coordinator",
		Usage: "run a coordinator: ingest, control API, and (when elected) the gate, router and queue-state",
		Flags: append(append(append(connectFlags(),
			&cli.StringFlag{Name: "http", Value: "127.0.0.1:8080", EnvVars: env("HTTP"), Usage: "HTTP address; empty = none"},
			&cli.StringFlag{Name: "id", EnvVars: env("COORDINATOR_ID"), Usage: "coordinator id (default host-random)"},
		), coordinatorFlags()...), logFlags()...),
		Action: func(c *cli.Context) error {
			log, err := newLogger(c)
			if err != nil {
				return err
			}
			defer func() { _ = log.Sync() }()
			cfg, err := coordinatorConfig(c)
			if err != nil {
				return err
			}
			cfg.ID = c.String("id")
			b, err := connect(c, "fleet-coordinator", log)
			if err != nil {
				return err
			}
			defer b.Close()
			co, err := coordinator.New(b, cfg, log)
			if err != nil {
				return err
			}
			return co.Run(c.Context)
		},
	}
}
