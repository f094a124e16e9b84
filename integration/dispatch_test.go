package integration

import (
	"context"
	"testing"
	"time"

	"github.com/agentqueue/fleet/factory"
	"github.com/agentqueue/fleet/job"
)

func TestEchoHelloRunsToSuccess(t *testing.T) {
	t.Parallel()
	f := startFleet(t)
	f.startFactory(factory.Config{Slots: 2})
	v := f.submit(job.Spec{Product: "acme", Command: []string{"echo", "hello"}, IdempotencyKey: "hello-1"})
	r := f.waitState(v.JobID, 20*time.Second, job.Succeeded)
	if r.ExitCode == nil || *r.ExitCode != 0 || r.OutputTail != "hello\n" || r.Epoch != 1 || r.Attempt != 1 {
		t.Fatalf("record: %+v", r)
	}
	evs := f.events(v.JobID)
	checkHistory(t, v.JobID, evs)
	if len(evs) != 4 || evs[3].To != job.Succeeded {
		t.Fatalf("events: %+v", evs)
	}
	_ = context.Background()
}
