package chaos

import (
	"bufio"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/agentqueue/fleet/job"
)

// history builds a job's events from "from>to@epoch/owner" steps, one per
// revision, each stored 10ms after the previous one from t0.
type history struct {
	id   string
	t0   time.Time
	rev  uint64
	seq  *uint64
	evs  []StoredEvent
	last job.State
}

func newHistory(id string, t0 time.Time, seq *uint64) *history {
	return &history{id: id, t0: t0, seq: seq}
}

// to appends a transition from the previous state (or creation).
func (h *history) to(s job.State, epoch uint64, owner string) *history {
	return h.step(h.last, s, epoch, owner)
}

func (h *history) step(from, to job.State, epoch uint64, owner string) *history {
	h.rev++
	*h.seq++
	at := h.t0.Add(time.Duration(h.rev) * 10 * time.Millisecond)
	h.evs = append(h.evs, StoredEvent{Event: job.Event{JobID: h.id, Product: "chaos", From: from, To: to, Epoch: epoch,
		Owner: owner, At: at, Rev: h.rev}, Seq: *h.seq, Stored: at.Add(time.Millisecond)})
	h.last = to
	return h
}

// skip consumes a revision without an event (an event lost from the trail).
func (h *history) skip(to job.State) *history {
	h.rev++
	h.last = to
	return h
}

func (h *history) at(rev uint64) time.Time { return h.evs[rev-1].Stored }

func rec(id string, s job.State, epoch uint64) job.Record {
	return job.Record{ID: id, State: s, Epoch: epoch}
}

func TestCheckCleanRun(t *testing.T) {
	var seq uint64
	t0 := time.Now()
	h := newHistory("a", t0, &seq).to(job.Queued, 0, "").to(job.Dispatched, 0, "").to(job.Running, 1, "f1").to(job.Succeeded, 1, "f1")
	row := Check(Input{Fault: "clean",
		Submissions: []Submission{{Key: "k", JobID: "a"}},
		Records:     map[string]job.Record{"a": rec("a", job.Succeeded, 1)},
		Events:      h.evs,
		Effects:     []Effect{{Job: "a", Epoch: 1, CheckStart: t0.Add(35 * time.Millisecond), At: t0.Add(36 * time.Millisecond), Accepted: true}},
	})
	if !row.Pass || row.Acked != 1 || row.Succeeded != 1 || row.Histories != 1 {
		t.Fatalf("clean run: %+v", row)
	}
}

func TestCheckLost(t *testing.T) {
	var seq uint64
	h := newHistory("a", time.Now(), &seq).to(job.Queued, 0, "").to(job.Dispatched, 0, "")
	row := Check(Input{
		Submissions: []Submission{{Key: "k1", JobID: "a"}, {Key: "k2", JobID: "missing"}},
		Records:     map[string]job.Record{"a": rec("a", job.Dispatched, 0)},
		Events:      h.evs,
	})
	if row.Pass || row.Lost != 2 || row.Succeeded != 0 {
		t.Fatalf("lost: %+v", row)
	}
}

func TestCheckSucceededTwiceByEvents(t *testing.T) {
	var seq uint64
	h := newHistory("a", time.Now(), &seq).to(job.Queued, 0, "").to(job.Dispatched, 0, "").to(job.Running, 1, "f1").
		to(job.Succeeded, 1, "f1").step(job.Running, job.Succeeded, 2, "f2")
	row := Check(Input{Records: map[string]job.Record{"a": rec("a", job.Succeeded, 2)}, Events: h.evs})
	if row.Pass || row.SucceededTwice != 1 || row.IllegalHistories != 1 {
		t.Fatalf("two successes: %+v", row)
	}
}

func TestCheckEffects(t *testing.T) {
	var seq uint64
	t0 := time.Now()
	// Epoch 1 is claimed by f1, lost; epoch 2 claimed by f2 (revision 5) and succeeds.
	h := newHistory("a", t0, &seq).to(job.Queued, 0, "").to(job.Dispatched, 0, "").to(job.Running, 1, "f1").
		to(job.Running, 2, "f2").to(job.Succeeded, 2, "f2")
	claim2 := h.at(4)
	records := map[string]job.Record{"a": rec("a", job.Succeeded, 2)}
	subs := []Submission{{Key: "k", JobID: "a"}}
	run := func(effs ...Effect) Row {
		return Check(Input{Submissions: subs, Records: records, Events: h.evs, Effects: effs})
	}
	e := func(epoch uint64, check time.Time, accepted bool) Effect {
		return Effect{Job: "a", Epoch: epoch, CheckStart: check, At: check.Add(20 * time.Millisecond), Accepted: accepted}
	}
	good := e(2, claim2.Add(time.Millisecond), true)

	// The old holder checked before epoch 2 existed: superseded, fine.
	if row := run(e(1, claim2.Add(-time.Millisecond), true), good); !row.Pass || row.SupersededEffects != 1 {
		t.Fatalf("superseded effect: %+v", row)
	}
	// It checked a second after epoch 2 was stored, and got through: stale.
	if row := run(good, e(1, claim2.Add(time.Second), true)); row.Pass || row.StaleEffects != 1 {
		t.Fatalf("stale effect: %+v", row)
	}
	// The ledger refused it: fencing worked.
	if row := run(good, e(1, claim2.Add(time.Second), false)); !row.Pass || row.RefusedEffects != 1 {
		t.Fatalf("refused effect: %+v", row)
	}
	// Two runs under one epoch.
	if row := run(good, e(2, claim2.Add(2*time.Second), true)); row.Pass || row.SucceededTwice != 1 {
		t.Fatalf("same-epoch effects: %+v", row)
	}
	// An effect under an epoch after the success.
	if row := run(good, e(3, claim2.Add(time.Second), true)); row.Pass || row.SucceededTwice != 1 {
		t.Fatalf("effect after success: %+v", row)
	}
	// A success with no effect under its epoch.
	if row := run(e(1, claim2.Add(-time.Millisecond), true)); row.Pass || row.NoEffect != 1 {
		t.Fatalf("success without effect: %+v", row)
	}
}

func TestCheckHistories(t *testing.T) {
	var seq uint64
	t0 := time.Now()
	gap := newHistory("gap", t0, &seq).to(job.Queued, 0, "").skip(job.Dispatched).to(job.Running, 1, "f1").to(job.Succeeded, 1, "f1")
	tail := newHistory("tail", t0, &seq).to(job.Queued, 0, "").to(job.Dispatched, 0, "").to(job.Running, 1, "f1")
	bad := newHistory("bad", t0, &seq).to(job.Queued, 0, "").step(job.Queued, job.Running, 1, "f1").to(job.Succeeded, 1, "f1")
	dup := newHistory("dup", t0, &seq).to(job.Queued, 0, "").to(job.Dispatched, 0, "")
	dupEv := dup.evs[1]
	dupEv.Seq = 99
	events := append(append(append(append([]StoredEvent{}, gap.evs...), tail.evs...), bad.evs...), append(dup.evs, dupEv)...)
	row := Check(Input{Events: events, Records: map[string]job.Record{
		"gap": rec("gap", job.Succeeded, 1), "tail": rec("tail", job.Succeeded, 1),
		"bad": rec("bad", job.Succeeded, 1), "dup": rec("dup", job.Dispatched, 0),
	}})
	if row.HistoryGaps != 2 || row.IllegalHistories != 1 || row.DuplicateEvents != 1 || row.Histories != 4 {
		t.Fatalf("histories: %+v", row)
	}
	joined := strings.Join(row.Evidence, "\n")
	for _, want := range []string{"job gap: revision 1 went to queued, revision 3 starts from dispatched",
		"job tail: last event dispatched→running", "job bad: revision 2: ", "queued → running"} {
		if !strings.Contains(joined, want) {
			t.Errorf("violations lack %q:\n%s", want, joined)
		}
	}
}

func TestCheckRecoveryAndTakeover(t *testing.T) {
	var seq uint64
	t0 := time.Now()
	h := newHistory("a", t0, &seq).to(job.Queued, 0, "").to(job.Dispatched, 0, "").to(job.Running, 1, "f1")
	fault := h.evs[2].At.Add(time.Second)
	h.t0 = t0.Add(5 * time.Second) // the next claim comes ~5s later
	h.to(job.Running, 2, "f2").to(job.Succeeded, 2, "f2")
	other := newHistory("b", fault.Add(200*time.Millisecond), &seq).to(job.Queued, 0, "").to(job.Dispatched, 0, "").to(job.Running, 1, "f2")
	row := Check(Input{Events: append(h.evs, other.evs...), Faults: []Fault{{What: "kill f1", At: fault, Factories: []string{"f1"}}}})
	wantRecovery := other.evs[2].At.Sub(fault).Milliseconds()
	wantTakeover := h.evs[3].At.Sub(fault).Milliseconds()
	if len(row.RecoveryMs) != 1 || row.RecoveryMs[0] != wantRecovery || len(row.TakeoverMs) != 1 || row.TakeoverMs[0] != wantTakeover {
		t.Fatalf("recovery %v (want %d), takeover %v (want %d)", row.RecoveryMs, wantRecovery, row.TakeoverMs, wantTakeover)
	}
}

func TestLedgerFence(t *testing.T) {
	l, err := StartLedger()
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	c, err := net.Dial("tcp", l.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	r := bufio.NewReader(c)
	now := time.Now().UnixNano()
	for _, step := range []struct{ line, want string }{
		{fmt.Sprintf("W j 2 %d", now), "OK"},
		{fmt.Sprintf("W j 1 %d", now), "REFUSED"},
		{fmt.Sprintf("W j 2 %d", now), "OK"},
		{fmt.Sprintf("W k 1 %d", now), "OK"},
		{"W j x 1", "ERR"},
	} {
		fmt.Fprintln(c, step.line)
		got, err := r.ReadString('\n')
		if err != nil || !strings.HasPrefix(got, step.want) {
			t.Fatalf("%q: got %q, %v; want %s", step.line, got, err, step.want)
		}
	}
	effs := l.Effects()
	if len(effs) != 4 || effs[1].Accepted || !effs[2].Accepted || effs[0].CheckStart.UnixNano() != now {
		t.Fatalf("effects: %+v", effs)
	}
}

func TestFormatTable(t *testing.T) {
	out := FormatTable([]Row{{Fault: "x", Pass: true, RecoveryMs: []int64{12, 40}},
		{Fault: "y", Violations: []string{"1 lost"}, Evidence: []string{"LOST: job a"}, RecoveryMs: []int64{-1}}})
	if !strings.Contains(out, "40ms") || !strings.Contains(out, "FAIL: 1 lost") || strings.Contains(out, "LOST: job a") {
		t.Fatalf("table:\n%s", out)
	}
}
