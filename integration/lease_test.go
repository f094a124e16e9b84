package integration

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/agentqueue/fleet/factory"
	"github.com/agentqueue/fleet/job"
	"github.com/agentqueue/fleet/subjects"
	"github.com/agentqueue/fleet/testenv"
)

// waitProcessGone waits until the process whose pid is in file has exited.
func waitProcessGone(t *testing.T, file string) {
	t.Helper()
	var pid int
	testenv.Eventually(t, 10*time.Second, func() bool {
		b, err := os.ReadFile(file)
		pid, _ = strconv.Atoi(strings.TrimSpace(string(b)))
		return err == nil && pid > 0
	}, "no pid in %s", file)
	testenv.Eventually(t, 10*time.Second, func() bool {
		return errors.Is(syscall.Kill(pid, 0), syscall.ESRCH)
	}, "process %d still alive", pid)
}

// stallFirstEpoch is a job that, under epoch 1, records its pid and blocks;
// under any later epoch it finishes at once. Each run appends its epoch to
// the effects file.
func stallFirstEpoch(dir string) job.Spec {
	return job.Spec{Product: "acme", MaxAttempts: 3, Env: map[string]string{"DIR": dir},
		Command: sh(`if [ "$AQ_FLEET_EPOCH" = 1 ]; then echo $$ > "$DIR/first.pid"; while [ ! -e "$DIR/go" ]; do sleep 0.05; done; fi
echo "$AQ_FLEET_EPOCH" >> "$DIR/effects"`)}
}

func waitFile(t *testing.T, path string) {
	t.Helper()
	testenv.Eventually(t, 20*time.Second, func() bool { _, err := os.Stat(path); return err == nil }, "no %s", path)
}

// A factory that dies mid-job (its connection gone, no ack) loses the job
// when its lease lapses; JetStream redelivers it and another factory finishes it.
func TestKilledFactoryJobFinishesElsewhere(t *testing.T) {
	t.Parallel()
	f := startFleet(t)
	dir := t.TempDir()
	a := f.startFactory(factory.Config{})
	v := f.submit(stallFirstEpoch(dir))
	waitFile(t, filepath.Join(dir, "first.pid"))
	a.b.NC.Close() // the factory is gone: nothing more reaches the broker from it
	waitProcessGone(t, filepath.Join(dir, "first.pid"))
	b := f.startFactory(factory.Config{})
	r := f.waitState(v.JobID, 30*time.Second, job.Succeeded)
	if r.Epoch != 2 || r.Owner != b.ID() {
		t.Fatalf("finished under epoch %d by %s, want epoch 2 by %s", r.Epoch, r.Owner, b.ID())
	}
	effects, _ := os.ReadFile(filepath.Join(dir, "effects"))
	if strings.TrimSpace(string(effects)) != "2" {
		t.Fatalf("effects %q, want only epoch 2's", effects)
	}
	checkHistory(t, v.JobID, f.events(v.JobID))
}

// A zombie: factory A is cut off (its traffic held, as by a pause or a
// partition) past its lease; B takes the job under epoch 2 and finishes it;
// when A's traffic flows again, A is fenced: its run is killed or its result
// refused, and the job's one result stands.
func TestZombieFactoryIsFenced(t *testing.T) {
	t.Parallel()
	f := startFleet(t)
	dir := t.TempDir()
	proxy := testenv.NewProxy(t, f.url)
	a := f.startFactoryOn(proxy.URL(), factory.Config{})
	v := f.submit(stallFirstEpoch(dir))
	waitFile(t, filepath.Join(dir, "first.pid"))
	proxy.Pause()
	b := f.startFactory(factory.Config{})
	r := f.waitState(v.JobID, 30*time.Second, job.Succeeded)
	if r.Epoch != 2 || r.Owner != b.ID() {
		t.Fatalf("finished under epoch %d by %s, want epoch 2 by %s", r.Epoch, r.Owner, b.ID())
	}
	proxy.Resume()
	waitProcessGone(t, filepath.Join(dir, "first.pid"))
	_ = a
	// The job's one result stands, and only epoch 2's effect was written.
	after := f.record(v.JobID)
	if after.State != job.Succeeded || after.Epoch != 2 {
		t.Fatalf("after the zombie resumed: %s epoch %d", after.State, after.Epoch)
	}
	effects, _ := os.ReadFile(filepath.Join(dir, "effects"))
	if strings.TrimSpace(string(effects)) != "2" {
		t.Fatalf("effects %q, want only epoch 2's", effects)
	}
	evs := f.events(v.JobID)
	checkHistory(t, v.JobID, evs)
	n := 0
	for _, e := range evs {
		if e.To == job.Succeeded {
			n++
		}
	}
	if n != 1 {
		t.Fatalf("%d succeeded events, want 1", n)
	}
}

// The control API refuses every call of an old epoch with its own error,
// and a forged future epoch or another factory's call as bad requests.
func TestStaleAndForgedCallsRefused(t *testing.T) {
	t.Parallel()
	f := startFleet(t)
	dir := t.TempDir()
	a := f.startFactory(factory.Config{})
	v := f.submit(stallFirstEpoch(dir))
	waitFile(t, filepath.Join(dir, "first.pid"))
	a.b.NC.Close()
	f.startFactory(factory.Config{})
	f.waitState(v.JobID, 30*time.Second, job.Succeeded)
	ctx := context.Background()
	call := func(verb string, req any) error {
		var r job.LeaseReply
		if err := f.b.Call(ctx, verb, req, &r); err != nil {
			t.Fatalf("%s: %v", verb, err)
		}
		return r.Err.AsError()
	}
	stale := job.LeaseRequest{JobID: v.JobID, Epoch: 1, Factory: a.ID()}
	for _, verb := range []string{subjects.VerbRenew, subjects.VerbRelease, subjects.VerbLease} {
		if err := call(verb, stale); !errors.Is(err, job.ErrStaleEpoch) {
			t.Errorf("%s with epoch 1: %v, want stale epoch", verb, err)
		}
	}
	if err := call(subjects.VerbComplete, job.CompleteRequest{JobID: v.JobID, Epoch: 1, Factory: a.ID(), Outcome: job.Outcome{ExitCode: 0}}); !errors.Is(err, job.ErrStaleEpoch) {
		t.Errorf("complete with epoch 1: %v, want stale epoch", err)
	}
	if err := call(subjects.VerbRenew, job.LeaseRequest{JobID: v.JobID, Epoch: 99, Factory: a.ID()}); !errors.Is(err, job.ErrBadRequest) {
		t.Errorf("forged epoch: %v, want bad request", err)
	}
	if err := call(subjects.VerbRenew, job.LeaseRequest{JobID: "a.>", Epoch: 1}); !errors.Is(err, job.ErrBadRequest) {
		t.Errorf("wildcard job id: %v, want bad request", err)
	}
	if err := call(subjects.VerbRenew, job.LeaseRequest{JobID: "nope", Epoch: 1}); !errors.Is(err, job.ErrNotFound) {
		t.Errorf("unknown job: %v, want not found", err)
	}
}
