package integration

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/agentqueue/fleet/broker"
	"github.com/agentqueue/fleet/coordinator"
	"github.com/agentqueue/fleet/factory"
	"github.com/agentqueue/fleet/job"
	"github.com/agentqueue/fleet/subjects"
	"github.com/agentqueue/fleet/testenv"
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
	lines := readAll(t, f.b.JS, subjects.StreamLogs, subjects.Logs(v.JobID), func(m jetstream.Msg) string {
		return m.Headers().Get(subjects.HeaderEpoch) + ":" + string(m.Data())
	})
	if len(lines) != 1 || lines[0] != "1:hello" {
		t.Fatalf("log lines: %q", lines)
	}
}

// 1,000 jobs through 4 factories: every job succeeds, and every command ran
// exactly once (each appends its epoch to a file named after its job).
func TestThousandJobsFourFactoriesExactlyOnce(t *testing.T) {
	t.Parallel()
	const n = 1000
	f := startFleet(t)
	dir := t.TempDir()
	for range 4 {
		f.startFactory(factory.Config{Slots: 4})
	}
	ids := make([]string, n)
	var wg sync.WaitGroup
	sem := make(chan struct{}, 32)
	for i := range n {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			ids[i] = f.submit(job.Spec{Product: "bulk", IdempotencyKey: fmt.Sprint("bulk-", i),
				Command: sh(`echo "$AQ_FLEET_EPOCH" >> "$DIR/$AQ_FLEET_JOB_ID"`), Env: map[string]string{"DIR": dir}}).JobID
		})
	}
	wg.Wait()
	var tot job.QueueState
	testenv.Eventually(t, 120*time.Second, func() bool {
		qs, err := f.b.ReadQueueState(context.Background())
		tot = qs[subjects.QueueStateTotal]
		return err == nil && tot.Queued == 0 && tot.Dispatched == 0 && tot.Running == 0 && tot.RetryWaiting == 0 &&
			tot.Updated.After(time.Now().Add(-time.Second))
	}, "fleet did not drain: %+v; %s", &tot, lazy(func() string { return f.unfinished(ids) }))
	for _, id := range ids {
		r := f.waitState(id, 10*time.Second, job.Succeeded)
		b, err := os.ReadFile(filepath.Join(dir, id))
		if err != nil {
			t.Fatalf("job %s left no effect: %v", id, err)
		}
		if got := strings.TrimSpace(string(b)); got != fmt.Sprint(r.Epoch) {
			t.Fatalf("job %s ran %q times/epochs, want exactly once under epoch %d", id, got, r.Epoch)
		}
	}
}

func TestDuplicateIdempotencyKeyIsOneJob(t *testing.T) {
	t.Parallel()
	f := startFleet(t)
	spec := job.Spec{Product: "acme", Command: []string{"true"}, IdempotencyKey: "same-key"}
	v1 := f.submit(spec)
	v2 := f.submit(spec) // inside JetStream's duplicate window
	if v1.JobID != v2.JobID || v2.Status != broker.StatusDuplicate {
		t.Fatalf("second submission: %+v vs %+v", v2, v1)
	}
	// Past the window: a new message id, the same key. The KV create refuses it.
	data, _ := json.Marshal(spec)
	v3, err := f.b.Submit(context.Background(), "acme", "other-msg-id", data, 10*time.Second)
	if err != nil || v3.Status != broker.StatusDuplicate {
		t.Fatalf("submission past the window: %+v %v", v3, err)
	}
	keys, _ := f.jobs.KV.ListKeys(context.Background())
	count := 0
	for range keys.Keys() {
		count++
	}
	if count != 1 {
		t.Fatalf("%d job records, want 1", count)
	}
}

func TestBadSubmissionsLandInDeadWithReason(t *testing.T) {
	t.Parallel()
	f := startFleet(t)
	cases := []struct {
		name, product string
		body          []byte
		reason        string
	}{
		{"malformed", "acme", []byte(`{"command": [`), "truncated"},
		{"not json", "acme", []byte("\x00\x01hello"), "malformed JSON"},
		{"wrong type", "acme", []byte(`{"command":"echo hi"}`), `field "command"`},
		{"unknown field", "acme", []byte(`{"command":["x"],"prio":1}`), "unknown field"},
		{"product mismatch", "acme", []byte(`{"product":"other","command":["x"]}`), "names product"},
		{"oversize", "acme", []byte(`{"command":["` + strings.Repeat("x", job.MaxSpecBytes) + `"]}`), "limit"},
		{"invalid utf8", "acme", []byte("{\"command\":[\"\xff\"]}"), "UTF-8"},
	}
	for _, tc := range cases {
		v, err := f.b.Submit(context.Background(), tc.product, "", tc.body, 10*time.Second)
		if err == nil || v.Status != broker.StatusRejected || !strings.Contains(v.Reason, tc.reason) {
			t.Errorf("%s: verdict %+v, err %v; want rejected mentioning %q", tc.name, v, err, tc.reason)
		}
	}
	dead := readAll(t, f.b.JS, subjects.StreamDead, subjects.Dead("acme"), func(m jetstream.Msg) jetstream.Msg { return m })
	if len(dead) != len(cases) {
		t.Fatalf("%d messages in FLEET_DEAD, want %d", len(dead), len(cases))
	}
	for i, m := range dead {
		if m.Headers().Get(subjects.HeaderKind) != broker.DeadRejected || !strings.Contains(m.Headers().Get(subjects.HeaderReason), cases[i].reason) {
			t.Errorf("dead %d: headers %v", i, m.Headers())
		}
		if string(m.Data()) != string(cases[i].body) {
			t.Errorf("dead %d: original submission not kept", i)
		}
	}
	// Nothing stalled: a good submission still runs.
	f.startFactory(factory.Config{})
	v := f.submit(job.Spec{Product: "acme", Command: []string{"true"}})
	f.waitState(v.JobID, 20*time.Second, job.Succeeded)
}

func TestUnroutableUntilMatchingFactoryJoins(t *testing.T) {
	t.Parallel()
	f := startFleet(t)
	f.startFactory(factory.Config{})
	v := f.submit(job.Spec{Product: "acme", Command: []string{"true"}, Requires: []string{"gpu"}})
	f.waitState(v.JobID, 10*time.Second, job.Queued)
	testenv.Eventually(t, 10*time.Second, func() bool {
		r := f.record(v.JobID)
		qs, _ := f.b.ReadQueueState(context.Background())
		return r.Unroutable && qs[subjects.QueueStateTotal].Unroutable == 1
	}, "job not marked unroutable")
	if r := f.record(v.JobID); r.State != job.Queued {
		t.Fatalf("unroutable job left the backlog: %s", r.State)
	}
	gpu := f.startFactory(factory.Config{Caps: []string{"gpu"}})
	r := f.waitState(v.JobID, 20*time.Second, job.Succeeded)
	if r.Pool != gpu.Pool() || r.Unroutable {
		t.Fatalf("ran in pool %q (gpu pool %q), unroutable=%v", r.Pool, gpu.Pool(), r.Unroutable)
	}
}

// With the gate on, jobs leave the backlog highest priority first, oldest
// first within a priority — whatever order they were published in.
func TestPriorityOrderUnderGate(t *testing.T) {
	t.Parallel()
	f := startFleet(t, func(c *coordinator.Config) { c.Prefetch = -1 })
	dir := t.TempDir()
	prios := []int{0, 5, 1, 5, 9, 0, 1, 9, 3}
	var ids []string
	for i, p := range prios {
		ids = append(ids, f.submit(job.Spec{Product: "acme", Priority: p, IdempotencyKey: fmt.Sprint("p", i),
			Command: sh(`echo "$AQ_FLEET_JOB_ID" >> "$DIR/order"`), Env: map[string]string{"DIR": dir}}).JobID)
	}
	// Every job is recorded before the only factory (one slot) joins.
	for _, id := range ids {
		f.waitState(id, 10*time.Second, job.Queued)
	}
	f.startFactory(factory.Config{Slots: 1})
	for _, id := range ids {
		f.waitState(id, 30*time.Second, job.Succeeded)
	}
	b, _ := os.ReadFile(filepath.Join(dir, "order"))
	got := strings.Fields(string(b))
	want := []string{ids[4], ids[7], ids[1], ids[3], ids[8], ids[2], ids[6], ids[0], ids[5]}
	if strings.Join(got, ",") != strings.Join(want, ",") {
		t.Fatalf("run order\n got %v\nwant %v", got, want)
	}
}

func TestFailingCommandRetriedWithBackoffThenDead(t *testing.T) {
	t.Parallel()
	f := startFleet(t)
	f.startFactory(factory.Config{Slots: 2})
	v := f.submit(job.Spec{Product: "acme", Command: sh("echo boom >&2; exit 3"), MaxAttempts: 3})
	r := f.waitState(v.JobID, 30*time.Second, job.Dead)
	if r.Attempt != 3 || r.ExitCode == nil || *r.ExitCode != 3 || !strings.Contains(r.LastError, "exit code 3") || r.OutputTail != "boom\n" {
		t.Fatalf("dead record: %+v", r)
	}
	evs := f.events(v.JobID)
	checkHistory(t, v.JobID, evs)
	var failedAt, requeuedAt []time.Time
	for _, e := range evs {
		switch {
		case e.To == job.Failed:
			failedAt = append(failedAt, e.At)
		case e.From == job.Failed && e.To == job.Queued:
			requeuedAt = append(requeuedAt, e.At)
		}
	}
	if len(failedAt) != 2 || len(requeuedAt) != 2 {
		t.Fatalf("want 2 failed→queued retries, events: %+v", evs)
	}
	// Backoff base 50ms doubling: the second wait is at least 100ms.
	if d := requeuedAt[0].Sub(failedAt[0]); d < 50*time.Millisecond {
		t.Fatalf("first retry after %v, want ≥ 50ms", d)
	}
	if d := requeuedAt[1].Sub(failedAt[1]); d < 100*time.Millisecond {
		t.Fatalf("second retry after %v, want ≥ 100ms", d)
	}
	dead := readAll(t, f.b.JS, subjects.StreamDead, subjects.Dead("acme"), func(m jetstream.Msg) jetstream.Msg { return m })
	if len(dead) != 1 || dead[0].Headers().Get(subjects.HeaderJobID) != v.JobID || dead[0].Headers().Get(subjects.HeaderKind) != broker.DeadJob {
		t.Fatalf("FLEET_DEAD: %d messages", len(dead))
	}
}

func TestTimeoutKillsProcessGroup(t *testing.T) {
	t.Parallel()
	f := startFleet(t)
	f.startFactory(factory.Config{})
	dir := t.TempDir()
	// The child starts a grandchild; both must die at the timeout.
	v := f.submit(job.Spec{Product: "acme", TimeoutSec: 1, MaxAttempts: 1, Env: map[string]string{"DIR": dir},
		Command: sh(`sleep 60 & echo $! > "$DIR/grandchild.pid"; sleep 60`)})
	r := f.waitState(v.JobID, 20*time.Second, job.Dead)
	if !strings.Contains(r.LastError, "timed out") {
		t.Fatalf("last error: %q", r.LastError)
	}
	waitProcessGone(t, filepath.Join(dir, "grandchild.pid"))
}
