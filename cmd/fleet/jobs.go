package main

import (
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/urfave/cli/v2"
	"go.uber.org/zap"

	"github.com/agentqueue/fleet/job"
	"github.com/agentqueue/fleet/subjects"
)

func jobsCommand() *cli.Command {
	return &cli.Command{
		Name:  "jobs",
		Usage: "list, show and cancel jobs",
		Subcommands: []*cli.Command{
			{
				Name:  "ls",
				Usage: "list jobs, newest first",
				Flags: append(connectFlags(),
					&cli.StringSliceFlag{Name: "state", Usage: "only jobs in these states (queued, running, dead, …)"},
					&cli.StringFlag{Name: "product", Usage: "only jobs of this product"},
					&cli.IntFlag{Name: "limit", Value: 50, Usage: "at most this many (0 = all)"},
					jsonFlag()),
				Action: runJobsLs,
			},
			{
				Name:      "show",
				Usage:     "show one job's record",
				ArgsUsage: "ID",
				Flags:     append(connectFlags(), jsonFlag()),
				Action:    runJobsShow,
			},
			{
				Name:      "cancel",
				Usage:     "cancel a job that has not finished (a running one is killed at its next renewal)",
				ArgsUsage: "ID",
				Flags:     append(connectFlags(), &cli.StringFlag{Name: "reason", Usage: "why, kept on the record"}),
				Action:    runJobsCancel,
			},
		},
	}
}

func runJobsLs(c *cli.Context) error {
	b, err := connect(c, "fleet-cli", zap.NewNop())
	if err != nil {
		return err
	}
	defer b.Close()
	jobs, err := b.OpenJobs(c.Context)
	if err != nil {
		return err
	}
	w, err := jobs.KV.WatchAll(c.Context, jetstream.IgnoreDeletes())
	if err != nil {
		return err
	}
	defer func() { _ = w.Stop() }()
	states := c.StringSlice("state")
	for _, s := range states {
		if !job.State(s).Valid() {
			return fmt.Errorf("--state %q: one of %v", s, job.States)
		}
	}
	var recs []job.Record
	for e := range w.Updates() {
		if e == nil {
			break
		}
		r, err := job.DecodeRecord(e.Value())
		if err != nil {
			continue
		}
		if len(states) > 0 && !slices.Contains(states, string(r.State)) || c.String("product") != "" && r.Spec.Product != c.String("product") {
			continue
		}
		recs = append(recs, r)
	}
	slices.SortFunc(recs, func(a, b job.Record) int { return b.Created.Compare(a.Created) })
	if n := c.Int("limit"); n > 0 && len(recs) > n {
		recs = recs[:n]
	}
	if c.Bool("json") {
		if recs == nil {
			recs = []job.Record{}
		}
		return printJSON(recs)
	}
	tw := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tSTATE\tPRODUCT\tPRIO\tATTEMPT\tPOOL\tAGE\tTITLE")
	for _, r := range recs {
		state := string(r.State)
		if r.Unroutable {
			state += " (unroutable)"
		}
		title := r.Spec.Title
		if title == "" {
			title = strings.Join(r.Spec.Command, " ")
		}
		if len(title) > 50 {
			title = title[:47] + "..."
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%d/%d\t%s\t%s\t%s\n", r.ID, state, r.Spec.Product, r.Spec.Priority,
			r.Attempt, r.Spec.MaxAttempts, dash(r.Pool), time.Since(r.Created).Round(time.Second), title)
	}
	return tw.Flush()
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// errRerun tells an action that oneID already ran the command again.
var errRerun = errors.New("rerun")

func ignoreRerun(err error) error {
	if errors.Is(err, errRerun) {
		return nil
	}
	return err
}

// oneID returns the single job id argument. urfave/cli stops reading flags
// at the first argument, so `fleet jobs show ID --json` would leave --json
// unread: the command is then run again with the id moved after its flags.
func oneID(c *cli.Context) (string, error) {
	if c.NArg() > 1 && strings.HasPrefix(c.Args().Get(1), "-") {
		var path []string
		for _, l := range c.Lineage() {
			if l.Command != nil && l.Command.Name != "" && l.Command.Name != c.App.Name {
				path = append([]string{l.Command.Name}, path...)
			}
		}
		args := append(append(append([]string{"fleet"}, path...), c.Args().Tail()...), c.Args().First())
		if err := newApp().RunContext(c.Context, args); err != nil {
			return "", err
		}
		return "", errRerun
	}
	if c.NArg() != 1 {
		return "", cli.Exit("give one job id (see `fleet jobs ls`)", 2)
	}
	id := c.Args().First()
	if err := subjects.CheckToken("job id", id); err != nil {
		return "", cli.Exit(err.Error(), 2)
	}
	return id, nil
}

func runJobsShow(c *cli.Context) error {
	id, err := oneID(c)
	if err != nil {
		return ignoreRerun(err)
	}
	b, err := connect(c, "fleet-cli", zap.NewNop())
	if err != nil {
		return err
	}
	defer b.Close()
	jobs, err := b.OpenJobs(c.Context)
	if err != nil {
		return err
	}
	r, _, err := jobs.Get(c.Context, id)
	if errors.Is(err, job.ErrNotFound) {
		return cli.Exit("no job "+id+" (see `fleet jobs ls`)", 1)
	}
	if err != nil {
		return err
	}
	if c.Bool("json") {
		return printJSON(r)
	}
	tw := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
	row := func(k string, v any) { fmt.Fprintf(tw, "%s:\t%v\n", k, v) }
	row("id", r.ID)
	row("state", r.State)
	if r.Unroutable {
		row("unroutable", "no live pool offers "+strings.Join(r.Spec.Requires, ", "))
	}
	row("product", r.Spec.Product)
	if r.Spec.Title != "" {
		row("title", r.Spec.Title)
	}
	if r.Spec.Item != "" {
		row("item", r.Spec.Item)
	}
	row("command", strings.Join(r.Spec.Command, " "))
	row("requires", dash(strings.Join(r.Spec.Requires, ", ")))
	row("priority", r.Spec.Priority)
	row("attempt", fmt.Sprintf("%d of %d", r.Attempt, r.Spec.MaxAttempts))
	row("pool", dash(r.Pool))
	row("epoch", r.Epoch)
	row("owner", dash(r.Owner))
	if !r.LeaseUntil.IsZero() {
		row("lease until", r.LeaseUntil.Format(time.RFC3339))
	}
	if !r.RetryAt.IsZero() {
		row("retry at", r.RetryAt.Format(time.RFC3339))
	}
	if r.ExitCode != nil {
		row("exit code", *r.ExitCode)
	}
	if r.LastError != "" {
		row("last error", r.LastError)
	}
	row("created", r.Created.Format(time.RFC3339))
	if !r.Finished.IsZero() {
		row("finished", r.Finished.Format(time.RFC3339))
	}
	_ = tw.Flush()
	if r.OutputTail != "" {
		fmt.Printf("output tail:\n%s", r.OutputTail)
		if !strings.HasSuffix(r.OutputTail, "\n") {
			fmt.Println()
		}
	}
	return nil
}

func runJobsCancel(c *cli.Context) error {
	id, err := oneID(c)
	if err != nil {
		return ignoreRerun(err)
	}
	b, err := connect(c, "fleet-cli", zap.NewNop())
	if err != nil {
		return err
	}
	defer b.Close()
	var r job.LeaseReply
	if err := b.Call(c.Context, subjects.VerbCancel, job.CancelRequest{JobID: id, Reason: c.String("reason")}, &r); err != nil {
		return err
	}
	if err := r.Err.AsError(); err != nil {
		return cli.Exit("cancel: "+err.Error(), 1)
	}
	fmt.Printf("%s %s\n", id, r.State)
	return nil
}
