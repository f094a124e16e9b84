package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/nats-io/nuid"
	"github.com/urfave/cli/v2"
	"go.uber.org/zap"

	"github.com/agentqueue/fleet/broker"
	"github.com/agentqueue/fleet/job"
)

func submitCommand() *cli.Command {
	return &cli.Command{
		Name:      "submit",
		Usage:     "submit a job; prints its id as the last line",
		ArgsUsage: "-- CMD [ARGS...]",
		Description: "The command after -- runs on a factory whose capabilities cover --requires.\n" +
			"With --wait, fleet follows the job, streams its output, and exits with its exit code.",
		Flags: append(connectFlags(),
			&cli.StringFlag{Name: "product", Value: "default", EnvVars: env("PRODUCT"), Usage: "product the job belongs to"},
			&cli.StringFlag{Name: "title", EnvVars: env("TITLE"), Usage: "short description"},
			&cli.StringFlag{Name: "item", EnvVars: env("ITEM"), Usage: "tracker item reference"},
			&cli.StringSliceFlag{Name: "requires", EnvVars: env("REQUIRES"), Usage: "required capability (key=value or bare key), repeatable"},
			&cli.IntFlag{Name: "priority", EnvVars: env("PRIORITY"), Usage: "higher runs first (-1000..1000)"},
			&cli.StringFlag{Name: "idempotency-key", EnvVars: env("IDEMPOTENCY_KEY"), Usage: "the same key twice makes one job (default: random)"},
			&cli.IntFlag{Name: "max-attempts", Value: job.DefaultMaxAttempts, EnvVars: env("MAX_ATTEMPTS"), Usage: "runs before the job is dead"},
			&cli.DurationFlag{Name: "timeout", Value: job.DefaultTimeoutSec * time.Second, EnvVars: env("TIMEOUT"), Usage: "longest a run may take"},
			&cli.StringSliceFlag{Name: "env", EnvVars: env("ENV"), Usage: "K=V for the command's environment, repeatable"},
			&cli.StringFlag{Name: "payload-file", EnvVars: env("PAYLOAD_FILE"), Usage: "file given to the command on stdin"},
			&cli.BoolFlag{Name: "wait", EnvVars: env("WAIT"), Usage: "follow the job to its end, stream its output, exit with its exit code"},
			&cli.DurationFlag{Name: "verdict-wait", Value: 10 * time.Second, EnvVars: env("VERDICT_WAIT"),
				Usage: "how long to wait for a coordinator to validate the submission"},
			jsonFlag(),
		),
		Action: runSubmit,
	}
}

func buildSpec(c *cli.Context) (job.Spec, error) {
	spec := job.Spec{
		Product: c.String("product"), Title: c.String("title"), Item: c.String("item"),
		Requires: c.StringSlice("requires"), Priority: c.Int("priority"), Command: c.Args().Slice(),
		MaxAttempts: c.Int("max-attempts"), TimeoutSec: int(c.Duration("timeout").Round(time.Second) / time.Second),
		IdempotencyKey: c.String("idempotency-key"),
	}
	if len(spec.Command) == 0 {
		return spec, errors.New("no command: put it after --, e.g. `fleet submit -- echo hello`")
	}
	if spec.TimeoutSec < 1 {
		return spec, fmt.Errorf("--timeout %v is under a second", c.Duration("timeout"))
	}
	for _, kv := range c.StringSlice("env") {
		k, v, ok := strings.Cut(kv, "=")
		if !ok {
			return spec, fmt.Errorf("--env %q: use K=V", kv)
		}
		if spec.Env == nil {
			spec.Env = map[string]string{}
		}
		spec.Env[k] = v
	}
	if p := c.String("payload-file"); p != "" {
		data, err := os.ReadFile(p)
		if err != nil {
			return spec, fmt.Errorf("--payload-file: %w", err)
		}
		if !utf8.Valid(data) {
			return spec, fmt.Errorf("--payload-file %s is not UTF-8 text; encode binary payloads (e.g. base64) first", p)
		}
		spec.Payload, _ = json.Marshal(string(data))
	}
	if spec.IdempotencyKey == "" {
		spec.IdempotencyKey = "submit-" + nuid.Next()
	}
	return spec, nil
}

func runSubmit(c *cli.Context) error {
	spec, err := buildSpec(c)
	if err != nil {
		return cli.Exit(err.Error(), 2)
	}
	b, err := connect(c, "fleet-submit", zap.NewNop())
	if err != nil {
		return err
	}
	defer b.Close()
	data, _ := json.Marshal(spec)
	v, err := b.Submit(c.Context, spec.Product, spec.IdempotencyKey, data, c.Duration("verdict-wait"))
	if errors.Is(err, broker.ErrRejected) {
		if c.Bool("json") {
			_ = printJSON(v)
		}
		return cli.Exit("rejected: "+v.Reason+" (kept in FLEET_DEAD)", 2)
	}
	if err != nil {
		return err
	}
	switch v.Status {
	case broker.StatusPending:
		fmt.Fprintf(os.Stderr, "accepted by JetStream (FLEET_INGEST seq %d); no coordinator has validated it yet — is one running?\n", v.Seq)
	case broker.StatusDuplicate:
		fmt.Fprintln(os.Stderr, "duplicate: a job with this idempotency key exists")
	}
	if !c.Bool("wait") {
		if c.Bool("json") {
			return printJSON(v)
		}
		fmt.Println(v.JobID)
		return nil
	}
	return waitJob(c.Context, b, v.JobID, c.Bool("json"))
}

// waitJob follows a job to its end and exits with its exit code.
func waitJob(ctx context.Context, b *broker.Broker, id string, asJSON bool) error {
	out, errOut := os.Stdout, os.Stderr
	if asJSON {
		out = os.Stderr // keep stdout for the JSON record
	}
	rec, err := printLogs(ctx, b, id, true, out, errOut)
	if err != nil {
		return err
	}
	if asJSON {
		_ = printJSON(rec)
	} else {
		fmt.Fprintf(os.Stderr, "job %s %s (attempt %d)%s\n", id, rec.State, rec.Attempt, suffix(rec.LastError))
		fmt.Println(id)
	}
	switch {
	case rec.State == job.Succeeded:
		return nil
	case rec.ExitCode != nil && *rec.ExitCode > 0:
		return cli.Exit("", *rec.ExitCode)
	default:
		return cli.Exit("", 1)
	}
}

func suffix(s string) string {
	if s == "" {
		return ""
	}
	return ": " + s
}
