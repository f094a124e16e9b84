package main

import (
	"fmt"
	"os"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/urfave/cli/v2"
	"go.uber.org/zap"

	"github.com/agentqueue/fleet/subjects"
)

func queueStateCommand() *cli.Command {
	return &cli.Command{
		Name:  "queue-state",
		Usage: "show queued, unroutable, dispatched and running jobs and free slots, per pool and in total",
		Flags: append(connectFlags(), jsonFlag()),
		Action: func(c *cli.Context) error {
			b, err := connect(c, "fleet-cli", zap.NewNop())
			if err != nil {
				return err
			}
			defer b.Close()
			states, err := b.ReadQueueState(c.Context)
			if err != nil {
				return err
			}
			if c.Bool("json") {
				return printJSON(states)
			}
			total, ok := states[subjects.QueueStateTotal]
			if !ok {
				return cli.Exit("no queue state yet: is a coordinator running?", 1)
			}
			keys := make([]string, 0, len(states))
			for k := range states {
				if k != subjects.QueueStateTotal {
					keys = append(keys, k)
				}
			}
			slices.Sort(keys)
			tw := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "POOL\tQUEUED\tUNROUTABLE\tDISPATCHED\tRUNNING\tFACTORIES\tSLOTS\tFREE\tOLDEST\tCAPS")
			for _, k := range append(keys, subjects.QueueStateTotal) {
				s := states[k]
				name := s.Pool
				if k == subjects.QueueStateTotal {
					name = "TOTAL"
				}
				fmt.Fprintf(tw, "%s\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t%s\t%s\n", name, s.Queued, s.Unroutable, s.Dispatched,
					s.Running, s.Factories, s.Slots, s.FreeSlots,
					(time.Duration(s.OldestQueuedSec * float64(time.Second))).Round(time.Second), strings.Join(s.Caps, ","))
			}
			_ = tw.Flush()
			fmt.Printf("gate %s · leader %s · updated %s ago\n", total.Gate, total.Leader, time.Since(total.Updated).Round(time.Millisecond))
			return nil
		},
	}
}
