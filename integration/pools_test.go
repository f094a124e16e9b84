package integration

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/agentqueue/fleet/coordinator"
	"github.com/agentqueue/fleet/factory"
	"github.com/agentqueue/fleet/job"
	"github.com/agentqueue/fleet/subjects"
	"github.com/agentqueue/fleet/testenv"
)

// A pool consumer keeps its state in memory, so a broker restart loses it:
// the factory, finding its consumer gone, registers again, which creates it;
// the job that was running across the restart is redelivered to the
// factory's free slot, told to wait by the record's live lease, and finishes
// once, under its first epoch; a job submitted after the restart runs too.
func TestPoolConsumerRebuiltAfterBrokerRestart(t *testing.T) {
	t.Parallel()
	f := startFleet(t)
	dir := t.TempDir()
	fa := f.startFactory(factory.Config{Slots: 2})
	pool := fa.Pool()
	ctx := context.Background()
	cons, err := f.b.JS.Consumer(ctx, subjects.StreamJobs, subjects.PoolConsumer(pool))
	if err != nil {
		t.Fatal(err)
	}
	if !cons.CachedInfo().Config.MemoryStorage {
		t.Fatal("pool consumer keeps its state on disk; want memory")
	}

	script := `echo run >> ` + filepath.Join(dir, "runs") + `; touch ` + filepath.Join(dir, "started") + `; sleep 3`
	long := f.submit(job.Spec{Product: "p", Command: sh(script), IdempotencyKey: "long"})
	waitFile(t, filepath.Join(dir, "started"))
	f.srv.Restart(t)
	testenv.Eventually(t, 15*time.Second, func() bool {
		_, err := f.b.JS.Consumer(ctx, subjects.StreamJobs, subjects.PoolConsumer(pool))
		return err == nil
	}, "pool consumer not created again after the restart")

	r := f.waitState(long.JobID, 30*time.Second, job.Succeeded)
	if r.Epoch != 1 || r.Attempt != 1 {
		t.Errorf("running job finished under epoch %d, attempt %d; want 1, 1", r.Epoch, r.Attempt)
	}
	runs, _ := os.ReadFile(filepath.Join(dir, "runs"))
	if n := strings.Count(string(runs), "run"); n != 1 {
		t.Errorf("the running job ran %d times, want once", n)
	}
	after := f.submit(job.Spec{Product: "p", Command: sh("true"), IdempotencyKey: "after"})
	f.waitState(after.JobID, 30*time.Second, job.Succeeded)
	testenv.Eventually(t, 10*time.Second, func() bool {
		c, err := f.b.JS.Consumer(ctx, subjects.StreamJobs, subjects.PoolConsumer(pool))
		return err == nil && c.CachedInfo().NumPending == 0 && c.CachedInfo().NumAckPending == 0
	}, "pool messages left after both jobs finished")
	checkHistory(t, long.JobID, f.events(long.JobID))
}

// With PoolStateOnDisk the consumer is file-backed and outlives a restart.
func TestPoolStateOnDisk(t *testing.T) {
	t.Parallel()
	f := startFleet(t, func(c *coordinator.Config) { c.PoolStateOnDisk = true })
	fa := f.startFactory(factory.Config{})
	ctx := context.Background()
	cons, err := f.b.JS.Consumer(ctx, subjects.StreamJobs, subjects.PoolConsumer(fa.Pool()))
	if err != nil {
		t.Fatal(err)
	}
	if cons.CachedInfo().Config.MemoryStorage {
		t.Fatal("pool consumer keeps its state in memory; want disk")
	}
	fa.stop(t)
	f.srv.Restart(t)
	testenv.Eventually(t, 10*time.Second, func() bool {
		_, err := f.b.JS.Consumer(ctx, subjects.StreamJobs, subjects.PoolConsumer(fa.Pool()))
		return err == nil
	}, "file-backed pool consumer gone after a restart")
}
