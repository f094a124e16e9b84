package integration

import (
	"context"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/agentqueue/fleet/factory"
	"github.com/agentqueue/fleet/job"
	"github.com/agentqueue/fleet/subjects"
	"github.com/agentqueue/fleet/testenv"
)

// Garbage on every control verb and on odd ingest subjects: each call gets a
// clear refusal, every submission lands in FLEET_DEAD, and the fleet still
// runs a job afterwards.
func TestGarbageIsRefusedAndNothingStalls(t *testing.T) {
	t.Parallel()
	f := startFleet(t)
	var inputs [][]byte
	for _, dir := range []string{"spec", "control"} {
		files, _ := filepath.Glob(filepath.Join("..", "job", "testdata", dir, "*"))
		for _, p := range files {
			b, err := os.ReadFile(p)
			if err != nil {
				t.Fatal(err)
			}
			inputs = append(inputs, b)
		}
	}
	rng := rand.New(rand.NewPCG(1, 2))
	for range 20 {
		b := make([]byte, rng.IntN(300))
		for i := range b {
			b[i] = byte(rng.IntN(256))
		}
		inputs = append(inputs, b)
	}
	inputs = append(inputs, []byte(`{"job_id":"x","epoch":18446744073709551615,"factory":"f"}`),
		[]byte(`{"job_id":"x","epoch":1e400}`), []byte(strings.Repeat("[", 100000)))

	verbs := []string{subjects.VerbClaim, subjects.VerbRenew, subjects.VerbComplete, subjects.VerbRelease,
		subjects.VerbLease, subjects.VerbCancel, subjects.VerbRegister, subjects.VerbHeartbeat, subjects.VerbDeregister, "nonsense"}
	for _, verb := range verbs {
		for _, in := range inputs {
			msg, err := f.b.NC.Request(subjects.Ctl(verb), in, 5*time.Second)
			if err != nil {
				t.Fatalf("%s: no answer to garbage: %v", verb, err)
			}
			var r struct {
				Verdict string        `json:"verdict"`
				Err     *job.CtlError `json:"error"`
			}
			if err := job.DecodeReply(msg.Data, &r); err != nil {
				t.Fatalf("%s: undecodable reply %q", verb, msg.Data)
			}
			if r.Err == nil && r.Verdict != string(job.VerdictDrop) {
				// Only a well-formed factory registration may be accepted.
				_, ferr := job.DecodeRequest[job.FactoryInfo](in)
				if !strings.Contains("register heartbeat deregister", verb) || ferr != nil {
					t.Fatalf("%s accepted %q: %s", verb, in, msg.Data)
				}
			}
			if r.Err != nil && r.Err.Message == "" {
				t.Fatalf("%s: refusal without a reason", verb)
			}
		}
	}

	// Submissions: garbage bodies, and subjects with no usable product.
	ctx := context.Background()
	subjectsUsed := []string{subjects.Ingest("acme"), "fleet.ingest.a.b", "fleet.ingest.acme.x.y"}
	n := 0
	for _, subj := range subjectsUsed {
		for _, in := range inputs[:8] {
			if _, err := f.b.JS.Publish(ctx, subj, in); err != nil {
				t.Fatalf("publish to %s: %v", subj, err)
			}
			n++
		}
	}
	// Every one of them is stored in FLEET_DEAD with a reason. (A seed that
	// is a valid spec for product acme would become a job; the seeds are
	// chosen so none is, except the "valid.json" one on acme's subject.)
	var dead []jetstream.Msg
	testenv.Eventually(t, 20*time.Second, func() bool {
		dead = readAll(t, f.b.JS, subjects.StreamDead, subjects.DeadRoot+".>", func(m jetstream.Msg) jetstream.Msg { return m })
		return len(dead) == n-1
	}, "want %d dead letters", n-1)
	for _, m := range dead {
		if m.Headers().Get(subjects.HeaderReason) == "" {
			t.Fatalf("dead letter without a reason: %v", m.Headers())
		}
	}
	f.startFactory(factory.Config{})
	v := f.submit(job.Spec{Product: "acme", Command: []string{"true"}})
	f.waitState(v.JobID, 20*time.Second, job.Succeeded)
}
