package chaos

import (
	"cmp"
	"encoding/json"
	"fmt"
	"maps"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/agentqueue/fleet/job"
)

// Submission is a job whose submission JetStream acknowledged.
type Submission struct {
	Key     string    `json:"key"`
	JobID   string    `json:"job_id"`
	AckedAt time.Time `json:"acked_at"`
	Poison  bool      `json:"poison,omitempty"` // always fails: expected dead
}

// StoredEvent is an event read back from FLEET_EVENTS.
type StoredEvent struct {
	job.Event
	Seq    uint64    // FLEET_EVENTS sequence
	Stored time.Time // when JetStream stored it (after the record's CAS)
}

// Fault is one injected fault.
type Fault struct {
	What string    `json:"what"`
	At   time.Time `json:"at"`
	// Factories the fault took out; the jobs they held at At are expected to
	// run again elsewhere (TAKEOVER).
	Factories []string `json:"factories,omitempty"`
}

// Input is everything the checker reads after a fault scenario.
type Input struct {
	Fault       string
	Submissions []Submission          // acknowledged submissions only
	Records     map[string]job.Record // fleet_jobs at the end
	Events      []StoredEvent         // all of FLEET_EVENTS
	Effects     []Effect              // the ledger
	Faults      []Fault
}

// StaleTolerance is the slack allowed between the moment FLEET_EVENTS
// stored a newer epoch's claim and the start of a lease check that must see
// it. Both clocks are the host's; the slack only absorbs clock reads.
const StaleTolerance = 100 * time.Millisecond

// Definitions documents, in the report itself, what each column counts.
var Definitions = map[string]string{
	"acked": "submissions JetStream acknowledged (PubAck received, including a duplicate ack of a retried publish); " +
		"submissions whose publish errored are not counted even if they were stored",
	"succeeded": "acked jobs whose fleet_jobs record is succeeded at the end",
	"dead":      "acked jobs whose record is dead at the end",
	"lost": "acked jobs that, after the fleet drained (with a deadline), are neither succeeded nor dead, " +
		"or have no record at all",
	"succeeded_twice": "jobs finished twice: more than one FLEET_EVENTS event with to=succeeded (distinct revisions); " +
		"or two accepted ledger effects under the same epoch (two runs under one fencing token); " +
		"or an accepted effect under an epoch higher than the one the job succeeded under (a run after the success). " +
		"Two accepted effects under distinct epochs are NOT by themselves a double finish: a run that made its effect " +
		"under a then-current lease and died before reporting (killed factory, its orphaned child, a paused host) is " +
		"re-run under a new epoch; that is the at-least-once re-execution the lease protocol allows and cannot prevent, " +
		"and it is counted under superseded_effects",
	"stale_effects": "accepted ledger effects whose `fleet lease check` began after fleet had already issued a newer " +
		"epoch of the job (the FLEET_EVENTS claim event carrying a higher epoch was stored more than 100ms before " +
		"the check began): the lease check said yes to a superseded lease and the effect got through",
	"superseded_effects": "accepted effects under an epoch lower than the job's final epoch whose lease check began " +
		"before that epoch was superseded (informational: at-least-once re-execution after a crash between effect and report)",
	"refused_effects":          "ledger writes refused by the ledger's own fence (epoch lower than one already accepted)",
	"succeeded_without_effect": "succeeded jobs with no accepted effect under the epoch they succeeded under (the checker job exits 0 only after an accepted write)",
	"illegal_histories": "jobs whose FLEET_EVENTS history (ordered by record revision) has a transition not in " +
		"job's table (job.CheckTransition), a creation that is not \"\"→queued or happens twice, any event after a " +
		"terminal one, or two different transitions at one revision",
	"history_gaps": "jobs whose history does not chain: an event's from differs from the previous event's to, the " +
		"first event is not the creation, or the last event's to differs from the final record state " +
		"(an event missing from the audit trail)",
	"recovery_ms": "per injected fault: fault → first FLEET_EVENTS to=running event (a job started) after it, by the " +
		"event's own time; -1 if none",
	"takeover_ms": "per factory fault: fault → the last of the jobs the factory held at that moment being claimed " +
		"under a newer epoch elsewhere; -1 if it held none",
	"model_drift": "after the fleet drained (every record finished), what fleet_queue_state (the leader's in-memory model) " +
		"still counts as queued/dispatched/running/retry-waiting; empty when it agrees (informational)",
	"fenced_calls": "control calls coordinators refused with stale_epoch/not_owner, by verb (from /fleet/metrics of " +
		"the coordinators alive at the end)",
}

// Row is the checker's verdict on one fault scenario.
type Row struct {
	Fault             string         `json:"fault"`
	Injections        int            `json:"injections"`
	Acked             int            `json:"acked"`
	Succeeded         int            `json:"succeeded"`
	Dead              int            `json:"dead"`
	Lost              int            `json:"lost"`
	SucceededTwice    int            `json:"succeeded_twice"`
	StaleEffects      int            `json:"stale_effects"`
	SupersededEffects int            `json:"superseded_effects"`
	RefusedEffects    int            `json:"refused_effects"`
	NoEffect          int            `json:"succeeded_without_effect"`
	Histories         int            `json:"histories_checked"`
	IllegalHistories  int            `json:"illegal_histories"`
	HistoryGaps       int            `json:"history_gaps"`
	DuplicateEvents   int            `json:"duplicate_events"`
	RecoveryMs        []int64        `json:"recovery_ms"`
	TakeoverMs        []int64        `json:"takeover_ms,omitempty"`
	FencedCalls       map[string]int `json:"fenced_calls,omitempty"`
	ModelDrift        string         `json:"model_drift,omitempty"`
	DurationSec       float64        `json:"duration_sec"`
	Notes             []string       `json:"notes,omitempty"`
	Violations        []string       `json:"violations,omitempty"` // one line per kind: "2 lost"
	Evidence          []string       `json:"evidence,omitempty"`   // the jobs and facts behind them
	Pass              bool           `json:"pass"`
}

// maxDetails bounds the evidence lines kept per kind of violation.
const maxDetails = 15

type details struct {
	n    map[string]int
	list []string
}

func (d *details) add(kind, format string, a ...any) {
	if d.n == nil {
		d.n = map[string]int{}
	}
	d.n[kind]++
	if d.n[kind] <= maxDetails {
		d.list = append(d.list, kind+": "+fmt.Sprintf(format, a...))
	} else if d.n[kind] == maxDetails+1 {
		d.list = append(d.list, kind+": … more omitted")
	}
}

// Check computes a Row from what a scenario left behind. It never waits and
// never reads anything but its input.
func Check(in Input) Row {
	row := Row{Fault: in.Fault, Injections: len(in.Faults)}
	var v details
	twice := map[string]bool{} // jobs finished twice, whatever the evidence

	byJob := map[string][]StoredEvent{}
	for _, e := range in.Events {
		byJob[e.JobID] = append(byJob[e.JobID], e)
	}
	for id, evs := range byJob {
		slices.SortStableFunc(evs, func(a, b StoredEvent) int {
			return cmp.Or(cmp.Compare(a.Rev, b.Rev), cmp.Compare(a.Seq, b.Seq))
		})
		byJob[id] = evs
	}

	// Histories.
	ids := map[string]bool{}
	for id := range in.Records {
		ids[id] = true
	}
	for id := range byJob {
		ids[id] = true
	}
	hist := map[string][]StoredEvent{} // deduplicated, by revision
	for _, id := range slices.Sorted(maps.Keys(ids)) {
		rec, hasRec := in.Records[id]
		h, dups, illegal, gaps := checkHistory(byJob[id], rec, hasRec)
		hist[id] = h
		row.Histories++
		row.DuplicateEvents += dups
		if len(illegal) > 0 {
			row.IllegalHistories++
			v.add("ILLEGAL HISTORY", "job %s: %s; history: %s", id, strings.Join(illegal, "; "), describe(h))
		}
		if len(gaps) > 0 {
			row.HistoryGaps++
			v.add("HISTORY GAP", "job %s: %s; history: %s", id, strings.Join(gaps, "; "), describe(h))
		}
		var succ []StoredEvent
		for _, e := range h {
			if e.To == job.Succeeded {
				succ = append(succ, e)
			}
		}
		if len(succ) > 1 {
			twice[id] = true
			v.add("SUCCEEDED TWICE", "job %s: %d succeeded events: %s", id, len(succ), describe(succ))
		}
	}

	// Acknowledged submissions.
	var deadHealthy []string
	for _, s := range in.Submissions {
		row.Acked++
		rec, ok := in.Records[s.JobID]
		switch {
		case !ok:
			row.Lost++
			v.add("LOST", "job %s (key %s, acked %s) has no record", s.JobID, s.Key, clock(s.AckedAt))
		case rec.State == job.Succeeded:
			row.Succeeded++
		case rec.State == job.Dead:
			row.Dead++
			if !s.Poison {
				deadHealthy = append(deadHealthy, fmt.Sprintf("%s (%s)", s.JobID, rec.LastError))
			}
		default:
			row.Lost++
			v.add("LOST", "job %s (key %s, acked %s) is %s at the end (epoch %d, attempt %d, owner %q, last error %q); history: %s",
				s.JobID, s.Key, clock(s.AckedAt), rec.State, rec.Epoch, rec.Attempt, rec.Owner, rec.LastError, describe(hist[s.JobID]))
		}
	}
	if len(deadHealthy) > 0 {
		row.Notes = append(row.Notes, fmt.Sprintf("%d checker jobs (not poison) ended dead: %s", len(deadHealthy), firstN(deadHealthy, 5)))
	}

	// Effects.
	effects := map[string][]Effect{}
	for _, e := range in.Effects {
		effects[e.Job] = append(effects[e.Job], e)
	}
	for _, id := range slices.Sorted(maps.Keys(effects)) {
		if checkEffects(id, effects[id], in.Records, hist[id], &row, &v) {
			twice[id] = true
		}
	}
	row.SucceededTwice = len(twice)
	for _, s := range in.Submissions {
		rec, ok := in.Records[s.JobID]
		if !ok || rec.State != job.Succeeded || s.Poison {
			continue
		}
		found := false
		for _, e := range effects[s.JobID] {
			found = found || e.Accepted && e.Epoch == rec.Epoch
		}
		if !found {
			row.NoEffect++
			v.add("SUCCEEDED WITHOUT EFFECT", "job %s succeeded under epoch %d with no accepted effect under it; effects: %s",
				s.JobID, rec.Epoch, describeEffects(effects[s.JobID]))
		}
	}

	// Recovery and takeover.
	var running []StoredEvent
	for _, e := range in.Events {
		if e.To == job.Running {
			running = append(running, e)
		}
	}
	slices.SortFunc(running, func(a, b StoredEvent) int { return a.At.Compare(b.At) })
	for _, f := range in.Faults {
		r := int64(-1)
		if i, _ := slices.BinarySearchFunc(running, f.At, func(e StoredEvent, t time.Time) int {
			if e.At.After(t) {
				return 1
			}
			return -1
		}); i < len(running) {
			r = running[i].At.Sub(f.At).Milliseconds()
		}
		row.RecoveryMs = append(row.RecoveryMs, r)
		if len(f.Factories) > 0 {
			row.TakeoverMs = append(row.TakeoverMs, takeover(f, hist))
		}
	}

	for _, s := range []struct {
		n    int
		what string
	}{{row.Lost, "lost"}, {row.SucceededTwice, "succeeded twice"}, {row.StaleEffects, "stale effects"},
		{row.NoEffect, "succeeded without effect"}, {row.IllegalHistories, "illegal histories"}, {row.HistoryGaps, "history gaps"}} {
		if s.n > 0 {
			row.Violations = append(row.Violations, fmt.Sprintf("%d %s", s.n, s.what))
		}
	}
	row.Evidence = v.list
	row.Pass = len(row.Violations) == 0
	return row
}

// checkHistory deduplicates a job's events (sorted by revision) and checks
// them against the transition table and against each other.
func checkHistory(evs []StoredEvent, rec job.Record, hasRec bool) (h []StoredEvent, dups int, illegal, gaps []string) {
	for _, e := range evs {
		if n := len(h); n > 0 && h[n-1].Rev == e.Rev {
			p := h[n-1]
			if p.From == e.From && p.To == e.To && p.Epoch == e.Epoch {
				dups++
			} else {
				illegal = append(illegal, fmt.Sprintf("two transitions at revision %d: %s and %s", e.Rev, arrow(p), arrow(e)))
			}
			continue
		}
		h = append(h, e)
	}
	if len(h) == 0 {
		if hasRec {
			gaps = append(gaps, fmt.Sprintf("no events at all; the record is %s", rec.State))
		}
		return h, dups, illegal, gaps
	}
	for i, e := range h {
		switch {
		case e.From == "" && i > 0:
			illegal = append(illegal, fmt.Sprintf("created again at revision %d", e.Rev))
		case e.From == "" && e.To != job.Queued:
			illegal = append(illegal, fmt.Sprintf("created as %s, not queued", e.To))
		case e.From != "":
			if err := job.CheckTransition(e.From, e.To); err != nil {
				illegal = append(illegal, fmt.Sprintf("revision %d: %v", e.Rev, err))
			}
		}
		if i == 0 {
			if e.From != "" {
				gaps = append(gaps, fmt.Sprintf("first event is %s at revision %d: the creation event is missing", arrow(e), e.Rev))
			}
			continue
		}
		p := h[i-1]
		switch {
		case p.To.Terminal():
			illegal = append(illegal, fmt.Sprintf("%s at revision %d after the job was %s at revision %d", arrow(e), e.Rev, p.To, p.Rev))
		case e.From != "" && e.From != p.To:
			gaps = append(gaps, fmt.Sprintf("revision %d went to %s, revision %d starts from %s", p.Rev, p.To, e.Rev, e.From))
		}
	}
	if last := h[len(h)-1]; hasRec && last.To != rec.State {
		gaps = append(gaps, fmt.Sprintf("last event %s at revision %d, but the record is %s (epoch %d)", arrow(last), last.Rev, rec.State, rec.Epoch))
	}
	return h, dups, illegal, gaps
}

// checkEffects classifies one job's ledger writes; it reports whether they
// show the job finished twice.
func checkEffects(id string, effs []Effect, records map[string]job.Record, h []StoredEvent, row *Row, v *details) (twice bool) {
	rec, hasRec := records[id]
	// supersededAt(e): when FLEET_EVENTS stored the first event of the job
	// carrying an epoch above e (the claim that issued the next epoch).
	supersededAt := func(epoch uint64) (time.Time, bool) {
		var first time.Time
		for _, e := range h {
			if e.Epoch > epoch && (first.IsZero() || e.Stored.Before(first)) {
				first = e.Stored
			}
		}
		return first, !first.IsZero()
	}
	finalEpoch := uint64(0)
	if hasRec {
		finalEpoch = rec.Epoch
	}
	accepted := map[uint64]int{}
	for _, e := range effs {
		if !e.Accepted {
			row.RefusedEffects++
			continue
		}
		accepted[e.Epoch]++
		if accepted[e.Epoch] == 2 {
			twice = true
			v.add("SUCCEEDED TWICE", "job %s: two accepted effects under epoch %d (two runs under one fencing token): %s",
				id, e.Epoch, describeEffects(effs))
		}
		if hasRec && rec.State == job.Succeeded && e.Epoch > rec.Epoch {
			twice = true
			v.add("SUCCEEDED TWICE", "job %s succeeded under epoch %d, yet an effect under epoch %d was accepted at %s",
				id, rec.Epoch, e.Epoch, clock(e.At))
		}
		if s, ok := supersededAt(e.Epoch); ok && e.CheckStart.After(s.Add(StaleTolerance)) {
			row.StaleEffects++
			v.add("STALE EFFECT", "job %s: effect under epoch %d accepted at %s; its lease check began at %s, %v after a newer epoch was stored at %s (final epoch %d, state %s)",
				id, e.Epoch, clock(e.At), clock(e.CheckStart), e.CheckStart.Sub(s).Round(time.Millisecond), clock(s), finalEpoch, rec.State)
			continue
		}
		if e.Epoch < finalEpoch {
			row.SupersededEffects++
		}
	}
	return twice
}

// takeover is how long after f the last job its factories held was claimed
// under a newer epoch; -1 if they held none.
func takeover(f Fault, hist map[string][]StoredEvent) int64 {
	worst := int64(-1)
	for _, h := range hist {
		var held *StoredEvent
		for i := range h {
			if h[i].At.After(f.At) {
				break
			}
			held = &h[i]
		}
		if held == nil || held.To != job.Running || !slices.Contains(f.Factories, held.Owner) {
			continue
		}
		for _, e := range h {
			if e.To == job.Running && e.Epoch > held.Epoch {
				worst = max(worst, e.At.Sub(f.At).Milliseconds())
				break
			}
		}
	}
	return worst
}

func arrow(e StoredEvent) string {
	from := string(e.From)
	if from == "" {
		from = `""`
	}
	return fmt.Sprintf("%s→%s", from, e.To)
}

func describe(h []StoredEvent) string {
	if len(h) == 0 {
		return "(none)"
	}
	parts := make([]string, len(h))
	for i, e := range h {
		parts[i] = fmt.Sprintf("r%d %s e%d %s %s", e.Rev, arrow(e), e.Epoch, e.Owner, clock(e.At))
	}
	return strings.Join(parts, ", ")
}

func describeEffects(effs []Effect) string {
	if len(effs) == 0 {
		return "(none)"
	}
	parts := make([]string, len(effs))
	for i, e := range effs {
		verdict := "accepted"
		if !e.Accepted {
			verdict = "refused"
		}
		parts[i] = fmt.Sprintf("e%d %s at %s (check %s)", e.Epoch, verdict, clock(e.At), clock(e.CheckStart))
	}
	return strings.Join(parts, ", ")
}

func clock(t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	return t.Local().Format("15:04:05.000")
}

func firstN(s []string, n int) string {
	if len(s) <= n {
		return strings.Join(s, "; ")
	}
	return strings.Join(s[:n], "; ") + fmt.Sprintf("; … %d more", len(s)-n)
}

// FormatTable renders rows as the suite's table, one line per fault.
func FormatTable(rows []Row) string {
	var b strings.Builder
	fmt.Fprintf(&b, "%-26s %3s %6s %6s %5s %5s %6s %6s %7s %8s %8s %8s %5s %11s %11s  %s\n",
		"FAULT", "N", "ACKED", "OK", "DEAD", "LOST", "TWICE", "STALE", "SUPERS", "REFUSED", "FENCED", "ILLEGAL", "GAPS",
		"RECOVERY", "TAKEOVER", "RESULT")
	for _, r := range rows {
		result := "PASS"
		if !r.Pass {
			result = "FAIL: " + strings.Join(r.Violations, ", ")
		}
		fenced := 0
		for _, n := range r.FencedCalls {
			fenced += n
		}
		fmt.Fprintf(&b, "%-26s %3d %6d %6d %5d %5d %6d %6d %7d %8d %8d %8d %5d %11s %11s  %s\n",
			r.Fault, r.Injections, r.Acked, r.Succeeded, r.Dead, r.Lost, r.SucceededTwice, r.StaleEffects,
			r.SupersededEffects, r.RefusedEffects, fenced, r.IllegalHistories, r.HistoryGaps,
			maxMs(r.RecoveryMs), maxMs(r.TakeoverMs), result)
	}
	return b.String()
}

func maxMs(ms []int64) string {
	if len(ms) == 0 {
		return "-"
	}
	m := slices.Max(ms)
	if m < 0 {
		return "none"
	}
	return fmt.Sprintf("%dms", m)
}

// Report is the JSON the suite writes.
type Report struct {
	Mode        string            `json:"mode"` // short | soak
	Started     time.Time         `json:"started"`
	DurationSec float64           `json:"duration_sec"`
	Settings    map[string]string `json:"settings"`
	Definitions map[string]string `json:"definitions"`
	Rows        []Row             `json:"rows"`
}

// WriteReport writes r as indented JSON to path.
func WriteReport(path string, r Report) error {
	data, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(path, append(data, '\n'), 0o644)
}
