// Command fleet runs and operates a fleet: the embedded broker, the
// coordinator, factories, and the operator's commands.
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/urfave/cli/v2"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

func newApp() *cli.App {
	return &cli.App{
		Name:    "fleet",
		Usage:   "dispatch jobs to capability pools of factories over NATS JetStream",
		Version: version,
		Description: "Start everything on one machine with `fleet up`, then `fleet submit --wait -- echo hello`.\n" +
			"Every flag can also be set by the AQ_FLEET_* environment variable shown beside it.",
		EnableBashCompletion: true,
		Commands: []*cli.Command{
			upCommand(),
			brokerCommand(),
			coordinatorCommand(),
			factoryCommand(),
			submitCommand(),
			jobsCommand(),
			logsCommand(),
			queueStateCommand(),
			leaseCommand(),
			benchCommand(),
		},
	}
}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := newApp().RunContext(ctx, os.Args)
	stop()
	if err == nil {
		return
	}
	var ec cli.ExitCoder
	if errors.As(err, &ec) {
		if msg := ec.Error(); msg != "" {
			fmt.Fprintln(os.Stderr, "fleet:", msg)
		}
		os.Exit(ec.ExitCode())
	}
	fmt.Fprintln(os.Stderr, "fleet:", err)
	os.Exit(1)
}
