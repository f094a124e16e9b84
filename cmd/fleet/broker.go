package main

import (
	"fmt"
	"strings"

	"github.com/urfave/cli/v2"

	"github.com/agentqueue/fleet/broker"
)

func brokerCommand() *cli.Command {
	return &cli.Command{
		Name:  "broker",
		Usage: "run an embedded NATS JetStream server (one node, or one node of a cluster)",
		Flags: append([]cli.Flag{
			&cli.StringFlag{Name: "store-dir", Value: ".fleet", EnvVars: env("STORE_DIR"), Usage: "JetStream data directory"},
			&cli.StringFlag{Name: "host", Value: "127.0.0.1", EnvVars: env("HOST"), Usage: "client listen address"},
			&cli.IntFlag{Name: "port", Value: 4222, EnvVars: env("PORT"), Usage: "client port"},
			&cli.StringFlag{Name: "server-name", EnvVars: env("SERVER_NAME"), Usage: "server name (required in a cluster)"},
			&cli.BoolFlag{Name: "lazy-sync", EnvVars: env("LAZY_SYNC"),
				Usage: "do not fsync before acknowledging writes (faster; a power loss can drop acknowledged jobs)"},
			&cli.IntFlag{Name: "monitor-port", EnvVars: env("MONITOR_PORT"), Usage: "NATS monitoring port (/varz, /jsz); 0 = off"},
			&cli.IntFlag{Name: "cluster-port", EnvVars: env("CLUSTER_PORT"), Usage: "route port for clustering; 0 = single node"},
			&cli.StringFlag{Name: "cluster-name", Value: "fleet", EnvVars: env("CLUSTER_NAME"), Usage: "cluster name"},
			&cli.StringFlag{Name: "routes", EnvVars: env("ROUTES"), Usage: "comma-separated nats-route://host:port of every node"},
		}, append(logFlags(), jsonFlag())...),
		Action: func(c *cli.Context) error {
			var routes []string
			if r := c.String("routes"); r != "" {
				routes = strings.Split(r, ",")
			}
			srv, err := broker.StartEmbedded(broker.EmbeddedConfig{StoreDir: c.String("store-dir"), Host: c.String("host"),
				Port: c.Int("port"), ServerName: c.String("server-name"), LazySync: c.Bool("lazy-sync"),
				MonitorPort: c.Int("monitor-port"), ClusterName: c.String("cluster-name"), ClusterPort: c.Int("cluster-port"),
				Routes: routes, Debug: c.String("log-level") == "debug"})
			if err != nil {
				return err
			}
			defer srv.Stop()
			if c.Bool("json") {
				_ = printJSON(map[string]string{"nats_url": srv.URL(), "monitor": srv.MonitorURL()})
			} else {
				fmt.Printf("broker listening on %s (sync: %s)\n", srv.URL(), map[bool]string{true: "lazy", false: "always"}[c.Bool("lazy-sync")])
			}
			<-c.Context.Done()
			return nil
		},
	}
}
