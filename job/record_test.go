package job

import (
	"errors"
	"testing"
	"time"
)

var t0 = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)

func dispatched(t *testing.T) Record {
	t.Helper()
	r := NewRecord("j1", Spec{Product: "p", Command: []string{"true"}, MaxAttempts: 2}, t0)
	r, err := r.Dispatch("pool1", t0)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func claim(r Record, factory string, delivery uint64, now time.Time) (Record, ClaimResult) {
	return r.Claim(ClaimRequest{JobID: r.ID, DispatchGen: r.DispatchGen, Factory: factory, StreamSeq: 5, Delivery: delivery}, now, 10*time.Second)
}

func TestClaimRules(t *testing.T) {
	t.Parallel()
	r := dispatched(t)
	r1, res := claim(r, "fa", 1, t0)
	if res.Verdict != VerdictRun || r1.Epoch != 1 || r1.Attempt != 1 || r1.State != Running || r1.Owner != "fa" {
		t.Fatalf("first claim: %+v %+v", res, r1)
	}
	// Same delivery, live lease: later.
	if _, res := claim(r1, "fb", 1, t0.Add(time.Second)); res.Verdict != VerdictLater || res.Retry != 9*time.Second {
		t.Fatalf("claim under live lease: %+v", res)
	}
	// A different copy of the message (another stream sequence), even with a
	// higher delivery count, proves nothing: later.
	if _, res := r1.Claim(ClaimRequest{JobID: "j1", DispatchGen: 1, Factory: "fb", StreamSeq: 6, Delivery: 3}, t0, time.Second); res.Verdict != VerdictLater {
		t.Fatalf("claim of a duplicate copy: %+v", res)
	}
	// Redelivery (higher delivery count): taken over with a new epoch.
	r2, res := claim(r1, "fb", 2, t0.Add(time.Second))
	if res.Verdict != VerdictRun || r2.Epoch != 2 || r2.Owner != "fb" {
		t.Fatalf("claim of redelivery: %+v %+v", res, r2)
	}
	// Lease lapsed: also taken over; attempts spent → dead instead.
	r3, res := claim(r2, "fc", 2, t0.Add(time.Minute))
	if res.Verdict != VerdictDrop || r3.State != Dead || !res.Changed {
		t.Fatalf("claim past max attempts: %+v %+v", res, r3)
	}
	// A delivery of a dispatch the record read has not reached (a replica
	// behind): later, never drop — the ack would lose the job.
	if _, res := r1.Claim(ClaimRequest{JobID: "j1", DispatchGen: 7, Factory: "fa", Delivery: 1}, t0, time.Second); res.Verdict != VerdictLater || res.Changed {
		t.Fatalf("generation ahead of the record: %+v", res)
	}
	// Stale dispatch generation: drop.
	redispatched, err := r1.Requeue("again", t0)
	if err != nil {
		t.Fatal(err)
	}
	if redispatched, err = redispatched.Dispatch("p", t0); err != nil {
		t.Fatal(err)
	}
	if _, res := redispatched.Claim(ClaimRequest{JobID: "j1", DispatchGen: 1, Factory: "fa", Delivery: 1}, t0, time.Second); res.Verdict != VerdictDrop || res.Changed {
		t.Fatalf("stale generation: %+v", res)
	}
	// Finished job: drop.
	done, err := r1.Complete(1, "fa", Outcome{}, t0, Backoff{})
	if err != nil {
		t.Fatal(err)
	}
	if _, res := claim(done, "fa", 2, t0); res.Verdict != VerdictDrop {
		t.Fatalf("claim of finished job: %+v", res)
	}
}

func TestEpochFencing(t *testing.T) {
	t.Parallel()
	r, _ := claim(dispatched(t), "fa", 1, t0)
	r2, _ := claim(r, "fb", 2, t0)
	cases := []struct {
		name    string
		epoch   uint64
		factory string
		want    error
	}{
		{"stale epoch", 1, "fa", ErrStaleEpoch},
		{"forged future epoch", 9, "fb", ErrBadRequest},
		{"not owner", 2, "fa", ErrNotOwner},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			if _, err := r2.Renew(tc.epoch, tc.factory, t0, time.Second); !errors.Is(err, tc.want) {
				t.Fatalf("Renew = %v, want %v", err, tc.want)
			}
			if _, err := r2.Complete(tc.epoch, tc.factory, Outcome{}, t0, Backoff{}); !errors.Is(err, tc.want) {
				t.Fatalf("Complete = %v, want %v", err, tc.want)
			}
			if _, err := r2.Release(tc.epoch, tc.factory, "x", t0); !errors.Is(err, tc.want) {
				t.Fatalf("Release = %v, want %v", err, tc.want)
			}
		})
	}
	if n, err := r2.Renew(2, "fb", t0.Add(time.Second), time.Second); err != nil || !n.LeaseUntil.Equal(t0.Add(2*time.Second)) {
		t.Fatalf("holder renew: %v %v", err, n.LeaseUntil)
	}
	if err := r2.CheckLease(2, t0); err != nil {
		t.Fatalf("CheckLease current: %v", err)
	}
	if err := r2.CheckLease(2, t0.Add(time.Hour)); !errors.Is(err, ErrStaleEpoch) {
		t.Fatalf("CheckLease lapsed: %v", err)
	}
}

func TestCompleteRetriesThenDead(t *testing.T) {
	t.Parallel()
	b := Backoff{Base: time.Second, Max: time.Minute}
	r, _ := claim(dispatched(t), "fa", 1, t0)
	f, err := r.Complete(1, "fa", Outcome{ExitCode: 3}, t0, b)
	if err != nil || f.State != Failed || !f.RetryAt.Equal(t0.Add(time.Second)) || f.LastError != "exit code 3" {
		t.Fatalf("first failure: %v %+v", err, f)
	}
	q, err := f.Requeue("", t0)
	if err != nil || q.State != Queued {
		t.Fatalf("requeue: %v %+v", err, q)
	}
	d, _ := q.Dispatch("pool1", t0)
	c, res := claim(d, "fa", 1, t0)
	if res.Verdict != VerdictRun || c.Attempt != 2 || c.Epoch != 2 {
		t.Fatalf("second claim: %+v %+v", res, c)
	}
	dead, err := c.Complete(2, "fa", Outcome{ExitCode: 1, Error: "timeout after 1s"}, t0, b)
	if err != nil || dead.State != Dead || dead.LastError == "" {
		t.Fatalf("last failure: %v %+v", err, dead)
	}
}

func TestReleaseRefundsAttempt(t *testing.T) {
	t.Parallel()
	r, _ := claim(dispatched(t), "fa", 1, t0)
	n, err := r.Release(1, "fa", "shutdown", t0)
	if err != nil || n.State != Queued || n.Attempt != 0 || n.Owner != "" {
		t.Fatalf("release: %v %+v", err, n)
	}
}

func TestBackoff(t *testing.T) {
	t.Parallel()
	b := Backoff{Base: time.Second, Max: 5 * time.Second}
	want := []time.Duration{time.Second, 2 * time.Second, 4 * time.Second, 5 * time.Second, 5 * time.Second}
	for i, w := range want {
		if got := b.Delay(i + 1); got != w {
			t.Errorf("Delay(%d) = %v, want %v", i+1, got, w)
		}
	}
}

func TestCancel(t *testing.T) {
	t.Parallel()
	r := dispatched(t)
	c, err := r.Cancel("no longer needed", t0)
	if err != nil || c.State != Cancelled {
		t.Fatalf("cancel: %v %+v", err, c)
	}
	if _, err := c.Cancel("again", t0); !errors.Is(err, ErrFinished) {
		t.Fatalf("cancel twice: %v", err)
	}
}

func TestRecordRoundTrip(t *testing.T) {
	t.Parallel()
	r, _ := claim(dispatched(t), "fa", 1, t0)
	got, err := DecodeRecord(r.Encode())
	if err != nil || got.Epoch != r.Epoch || got.State != r.State || !got.LeaseUntil.Equal(r.LeaseUntil) {
		t.Fatalf("round trip: %v %+v", err, got)
	}
	if _, err := DecodeRecord([]byte(`{"state":"nope"}`)); err == nil {
		t.Fatal("unknown state accepted")
	}
}
