package main

import (
	"time"

	"github.com/urfave/cli/v2"

	"github.com/agentqueue/fleet/factory"
)

func factoryCommand() *cli.Command {
	return &cli.Command{
		Name:  "factory",
		Usage: "run a factory: pull jobs of its pool and run them as child processes",
		Description: "os=<GOOS> and arch=<GOARCH> are added to the capabilities unless given. The pool defaults\n" +
			"to a name derived from the capabilities. SIGTERM stops fetching, lets running jobs finish for\n" +
			"--grace, then kills the rest and gives them back for retry.",
		Flags: append(append(connectFlags(),
			&cli.StringFlag{Name: "id", EnvVars: env("FACTORY_ID"), Usage: "factory id (default host-random)"},
			&cli.StringSliceFlag{Name: "cap", EnvVars: env("CAPS"), Usage: "capability (key=value or bare key), repeatable"},
			&cli.StringFlag{Name: "pool", EnvVars: env("POOL"), Usage: "pool name (default derived from the capabilities)"},
			&cli.IntFlag{Name: "slots", Value: 1, EnvVars: env("SLOTS"), Usage: "jobs run at once"},
			&cli.DurationFlag{Name: "grace", Value: 30 * time.Second, EnvVars: env("GRACE"), Usage: "how long running jobs may finish on shutdown"},
			&cli.StringFlag{Name: "workdir", EnvVars: env("WORKDIR"), Usage: "working directory of jobs (default the factory's)"},
		), logFlags()...),
		Action: func(c *cli.Context) error {
			log, err := newLogger(c)
			if err != nil {
				return err
			}
			defer func() { _ = log.Sync() }()
			b, err := connect(c, "fleet-factory", log)
			if err != nil {
				return err
			}
			defer b.Close()
			fa, err := factory.New(b, factory.Config{ID: c.String("id"), Caps: c.StringSlice("cap"), Pool: c.String("pool"),
				Slots: c.Int("slots"), Grace: c.Duration("grace"), Runner: factory.ExecRunner{Dir: c.String("workdir")}}, log)
			if err != nil {
				return err
			}
			return fa.Run(c.Context)
		},
	}
}
