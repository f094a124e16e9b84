package integration

import (
	"encoding/json"
	"io"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/agentqueue/fleet/coordinator"
	"github.com/agentqueue/fleet/factory"
	"github.com/agentqueue/fleet/job"
	"github.com/agentqueue/fleet/testenv"
)

func httpGet(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func TestHTTPQueueStateAndMetrics(t *testing.T) {
	t.Parallel()
	f := startFleet(t, func(c *coordinator.Config) { c.HTTPAddr = "127.0.0.1:0" })
	base := "http://" + f.coord.HTTPAddr()
	f.startFactory(factory.Config{Slots: 3})
	v := f.submit(job.Spec{Product: "acme", Command: []string{"true"}, Requires: []string{"gpu"}})
	var qs struct {
		Total job.QueueState            `json:"total"`
		Pools map[string]job.QueueState `json:"pools"`
	}
	testenv.Eventually(t, 10*time.Second, func() bool {
		code, body := httpGet(t, base+"/fleet/queue-state")
		return code == 200 && json.Unmarshal([]byte(body), &qs) == nil && qs.Total.Unroutable == 1 && qs.Total.Slots == 3 && len(qs.Pools) == 1
	}, "queue-state over HTTP never showed the unroutable job and 3 slots")
	if qs.Total.Gate != "on" {
		t.Fatalf("queue state: %+v", qs)
	}
	code, body := httpGet(t, base+"/fleet/metrics")
	for _, want := range []string{`fleet_unroutable_jobs{pool="_total"} 1`, `fleet_slots{pool="_total"} 3`, "fleet_submissions_accepted_total 1"} {
		if code != 200 || !strings.Contains(body, want) {
			t.Fatalf("metrics (%d) lack %q:\n%s", code, want, body)
		}
	}
	if code, body := httpGet(t, base+"/fleet/jobs/"+v.JobID); code != 200 || !strings.Contains(body, `"state": "queued"`) {
		t.Fatalf("GET job: %d %s", code, body)
	}
	if code, _ := httpGet(t, base+"/fleet/jobs/nope"); code != 404 {
		t.Fatalf("GET unknown job: %d", code)
	}
	resp, err := http.Post(base+"/fleet/jobs", "application/json", strings.NewReader(`{"product":"acme","command":["true"],"bogus":1}`))
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 422 || !strings.Contains(string(b), "unknown field") {
		t.Fatalf("POST bad job: %d %s", resp.StatusCode, b)
	}
}

// On stop, a factory lets its running job finish for the grace period, then
// kills it and gives it back; another factory runs it, and the attempt the
// shutdown interrupted is not counted.
func TestGracefulStopReleasesRunningJob(t *testing.T) {
	t.Parallel()
	f := startFleet(t)
	dir := t.TempDir()
	a := f.startFactory(factory.Config{Grace: 300 * time.Millisecond})
	v := f.submit(stallFirstEpoch(dir))
	waitFile(t, filepath.Join(dir, "first.pid"))
	a.stop(t)
	waitProcessGone(t, filepath.Join(dir, "first.pid"))
	r := f.record(v.JobID)
	if (r.State != job.Queued && r.State != job.Dispatched) || r.Attempt != 0 || !strings.Contains(r.LastError, "released") {
		t.Fatalf("after the stop: %s attempt %d %q", r.State, r.Attempt, r.LastError)
	}
	f.startFactory(factory.Config{})
	r = f.waitState(v.JobID, 20*time.Second, job.Succeeded)
	if r.Epoch != 2 || r.Attempt != 1 {
		t.Fatalf("finished at epoch %d attempt %d", r.Epoch, r.Attempt)
	}
	checkHistory(t, v.JobID, f.events(v.JobID))
}
