package main

import (
	"context"
	"fmt"
	"io"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/agentqueue/fleet/broker"
	"github.com/agentqueue/fleet/job"
	"github.com/agentqueue/fleet/subjects"
)

// printLogs prints a job's output lines from the start: stdout lines to out,
// stderr lines to errOut. With follow it keeps printing until the job is
// finished and every line it wrote has been printed; it returns the final record.
func printLogs(ctx context.Context, b *broker.Broker, jobID string, follow bool, out, errOut io.Writer) (job.Record, error) {
	jobs, err := b.OpenJobs(ctx)
	if err != nil {
		return job.Record{}, err
	}
	rec, _, err := jobs.Get(ctx, jobID)
	if err != nil {
		return rec, err
	}
	stream, err := b.JS.Stream(ctx, subjects.StreamLogs)
	if err != nil {
		return rec, fmt.Errorf("logs stream: %w", err)
	}
	oc, err := stream.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{FilterSubjects: []string{subjects.Logs(jobID)}})
	if err != nil {
		return rec, fmt.Errorf("read logs: %w", err)
	}
	var printed uint64
	lines := make(chan jetstream.Msg, 256)
	cc, err := oc.Consume(func(m jetstream.Msg) {
		select {
		case lines <- m:
		case <-ctx.Done():
		}
	})
	if err != nil {
		return rec, fmt.Errorf("read logs: %w", err)
	}
	defer cc.Stop()

	var watch jetstream.KeyWatcher
	if follow {
		if watch, err = jobs.KV.Watch(ctx, jobID); err != nil {
			return rec, err
		}
		defer func() { _ = watch.Stop() }()
	}
	finished := !follow || rec.State.Terminal()
	// written is how many lines the job has in the stream; known once it is
	// finished, since its factory waits for its lines to be stored before it
	// reports the outcome.
	written := func() uint64 {
		info, err := stream.Info(ctx, jetstream.WithSubjectFilter(subjects.Logs(jobID)))
		if err != nil {
			return 0
		}
		return info.State.Subjects[subjects.Logs(jobID)]
	}
	want := uint64(0)
	if finished {
		want = written()
	}
	var updates <-chan jetstream.KeyValueEntry
	if watch != nil {
		updates = watch.Updates()
	}
	for !finished || printed < want {
		select {
		case <-ctx.Done():
			return rec, ctx.Err()
		case m := <-lines:
			w := out
			if m.Headers().Get(subjects.HeaderStream) == "stderr" {
				w = errOut
			}
			fmt.Fprintf(w, "%s\n", m.Data())
			printed++
		case e, ok := <-updates:
			if !ok {
				updates = nil
				continue
			}
			if e == nil || e.Operation() != jetstream.KeyValuePut {
				continue
			}
			if r, err := job.DecodeRecord(e.Value()); err == nil {
				rec = r
				if r.State.Terminal() && !finished {
					finished, want = true, written()
				}
			}
		case <-time.After(5 * time.Second):
			if finished {
				return rec, nil // lines lost to the stream's limits; do not hang
			}
		}
	}
	return rec, nil
}
