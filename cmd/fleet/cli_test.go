package main

import (
	"encoding/json"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/agentqueue/fleet/testenv"
)

// The README's path, with the real binary: `fleet up`, then
// `fleet submit --wait -- echo hello`, then Ctrl-C.
func TestUpSubmitWaitAndStop(t *testing.T) {
	t.Parallel()
	bin := testenv.BuildFleet(t, "github.com/agentqueue/fleet/cmd/fleet")
	dir := t.TempDir()
	up := testenv.StartProcess(t, nil, bin, "up", "--data-dir", dir, "--port", "-1", "--http", "127.0.0.1:0", "--retry-base", "50ms")
	m := up.WaitLine(60*time.Second, regexp.MustCompile(`NATS:\s+(nats://\S+)`))
	url := []string{"AQ_FLEET_URL=" + m[1]}

	out, errOut, code := testenv.Run(t, 60*time.Second, url, bin, "submit", "--wait", "--", "echo", "hello")
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if code != 0 || len(lines) != 2 || lines[0] != "hello" {
		t.Fatalf("submit --wait: code %d, stdout %q, stderr %q", code, out, errOut)
	}
	id := lines[1]

	out, _, code = testenv.Run(t, 30*time.Second, url, bin, "jobs", "show", id, "--json")
	var rec struct {
		State string `json:"state"`
	}
	if code != 0 || json.Unmarshal([]byte(out), &rec) != nil || rec.State != "succeeded" {
		t.Fatalf("jobs show --json: code %d, %q", code, out)
	}

	// The job's exit code is the CLI's.
	_, _, code = testenv.Run(t, 60*time.Second, url, bin, "submit", "--wait", "--max-attempts", "1", "--", "sh", "-c", "exit 7")
	if code != 7 {
		t.Fatalf("failing job: exit code %d, want 7", code)
	}

	// A bad submission: the reason, and a non-zero exit.
	_, errOut, code = testenv.Run(t, 30*time.Second, url, bin, "submit", "--env", "AQ_FLEET_EPOCH=9", "--", "true")
	if code != 2 || !strings.Contains(errOut, "reserved") || !strings.Contains(errOut, "FLEET_DEAD") {
		t.Fatalf("bad submission: code %d, stderr %q", code, errOut)
	}

	out, _, code = testenv.Run(t, 30*time.Second, url, bin, "queue-state", "--json")
	if code != 0 || !strings.Contains(out, `"total"`) {
		t.Fatalf("queue-state --json: code %d, %q", code, out)
	}

	up.Signal(syscall.SIGINT)
	if code := up.Wait(60 * time.Second); code != 0 {
		t.Fatalf("fleet up exited %d after SIGINT", code)
	}
}
