package main

import (
	"fmt"
	"os"
	"strconv"

	"github.com/urfave/cli/v2"
	"go.uber.org/zap"

	"github.com/agentqueue/fleet/job"
	"github.com/agentqueue/fleet/subjects"
)

func leaseCommand() *cli.Command {
	return &cli.Command{
		Name:  "lease",
		Usage: "lease checks for a running job's own side effects",
		Subcommands: []*cli.Command{{
			Name:  "check",
			Usage: "exit 0 if this job's lease (AQ_FLEET_JOB_ID, AQ_FLEET_EPOCH) is current, non-zero with the reason if not",
			Description: "Run it inside a job before a side effect (a push, a PR, an API call):\n" +
				"  fleet lease check && git push\n" +
				"It reads the job id and epoch fleet gave the job, and AQ_FLEET_NATS_URL for the broker.",
			Flags: append(connectFlags(),
				&cli.StringFlag{Name: "job", EnvVars: env("JOB_ID"), Usage: "job id"},
				&cli.StringFlag{Name: "epoch", EnvVars: env("EPOCH"), Usage: "epoch the job runs under"},
				jsonFlag()),
			Action: func(c *cli.Context) error {
				if u := os.Getenv("AQ_FLEET_NATS_URL"); u != "" && !c.IsSet("url") {
					_ = c.Set("url", u)
				}
				epoch, err := strconv.ParseUint(c.String("epoch"), 10, 64)
				if err != nil || c.String("job") == "" {
					return cli.Exit("lease check needs AQ_FLEET_JOB_ID and AQ_FLEET_EPOCH (set by the factory for every job), or --job and --epoch", 2)
				}
				b, err := connect(c, "fleet-lease-check", zap.NewNop())
				if err != nil {
					return cli.Exit(err.Error(), 3)
				}
				defer b.Close()
				var r job.LeaseReply
				if err := b.Call(c.Context, subjects.VerbLease, job.LeaseRequest{JobID: c.String("job"), Epoch: epoch}, &r); err != nil {
					return cli.Exit("cannot check the lease: "+err.Error(), 3)
				}
				if c.Bool("json") {
					_ = printJSON(r)
				}
				if err := r.Err.AsError(); err != nil {
					return cli.Exit("lease not current: "+err.Error(), 1)
				}
				if !c.Bool("json") {
					fmt.Printf("lease current: job %s epoch %d until %s\n", c.String("job"), epoch, r.LeaseUntil.Format("15:04:05.000"))
				}
				return nil
			},
		}},
	}
}
