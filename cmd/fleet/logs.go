package main

import (
	"errors"
	"os"

	"github.com/urfave/cli/v2"
	"go.uber.org/zap"

	"github.com/agentqueue/fleet/job"
)

func logsCommand() *cli.Command {
	return &cli.Command{
		Name:      "logs",
		Usage:     "print a job's output (stdout to stdout, stderr to stderr)",
		ArgsUsage: "ID",
		Flags: append(connectFlags(),
			&cli.BoolFlag{Name: "follow", Aliases: []string{"f"}, Usage: "keep printing until the job finishes"}),
		Action: func(c *cli.Context) error {
			id, err := oneID(c)
			if err != nil {
				return ignoreRerun(err)
			}
			b, err := connect(c, "fleet-cli", zap.NewNop())
			if err != nil {
				return err
			}
			defer b.Close()
			_, err = printLogs(c.Context, b, id, c.Bool("follow"), os.Stdout, os.Stderr)
			if errors.Is(err, job.ErrNotFound) {
				return cli.Exit("no job "+id+" (see `fleet jobs ls`)", 1)
			}
			return err
		},
	}
}
