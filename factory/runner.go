package factory

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strconv"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/agentqueue/fleet/job"
)

// Task is one run of a job under a lease.
type Task struct {
	JobID   string
	Epoch   uint64
	Attempt int
	Spec    job.Spec
	NATSURL string // for `fleet lease check` from inside the job
	// Log ships one output line ("stdout" or "stderr").
	Log func(stream string, line []byte)
}

// Runner runs a task to its end. When ctx is cancelled the runner must stop
// the work at once (the lease is lost, or the factory is going away).
type Runner interface {
	Run(ctx context.Context, t Task) job.Outcome
}

// RunnerFunc adapts a function to Runner (in-process runners for benchmarks
// and tests).
type RunnerFunc func(ctx context.Context, t Task) job.Outcome

// Run implements Runner.
func (f RunnerFunc) Run(ctx context.Context, t Task) job.Outcome { return f(ctx, t) }

// ExecRunner runs the job's command as a child process in its own process
// group, with the payload on stdin and fleet's variables in its environment:
// AQ_FLEET_JOB_ID, AQ_FLEET_EPOCH, AQ_FLEET_ATTEMPT, AQ_FLEET_NATS_URL.
type ExecRunner struct {
	Dir     string // working directory; default the factory's
	TailLen int    // bytes of output kept for the record; default 2 KiB
}

// maxLine bounds one shipped log line.
const maxLine = 16 << 10

// Run implements Runner.
func (r ExecRunner) Run(ctx context.Context, t Task) job.Outcome {
	tail := &tailBuffer{max: r.TailLen}
	if tail.max <= 0 {
		tail.max = 2 << 10
	}
	timeout := time.Duration(t.Spec.TimeoutSec) * time.Second
	cmd := exec.Command(t.Spec.Command[0], t.Spec.Command[1:]...)
	cmd.Dir = r.Dir
	cmd.Env = append(os.Environ(), envList(t)...)
	if p := t.Spec.PayloadBytes(); p != nil {
		cmd.Stdin = bytes.NewReader(p)
	}
	setProcessGroup(cmd)
	stdout, err1 := cmd.StdoutPipe()
	stderr, err2 := cmd.StderrPipe()
	if err := errors.Join(err1, err2); err != nil {
		return job.Outcome{ExitCode: -1, Error: "cannot start: " + err.Error()}
	}
	if err := cmd.Start(); err != nil {
		return job.Outcome{ExitCode: -1, Error: "cannot start: " + err.Error()}
	}
	var wg sync.WaitGroup
	for _, p := range []struct {
		name string
		r    io.Reader
	}{{"stdout", stdout}, {"stderr", stderr}} {
		wg.Go(func() { pump(p.r, p.name, t.Log, tail) })
	}
	waitErr := make(chan error, 1)
	go func() {
		wg.Wait() // pipes must be drained before Wait
		waitErr <- cmd.Wait()
	}()
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	var reason string
	var err error
	select {
	case err = <-waitErr:
	case <-ctx.Done():
		killGroup(cmd)
		err = <-waitErr
		reason = "stopped: " + context.Cause(ctx).Error()
	case <-timer.C:
		killGroup(cmd)
		err = <-waitErr
		reason = fmt.Sprintf("timed out after %v", timeout)
	}
	out := job.Outcome{OutputTail: tail.String(), Error: reason}
	var ee *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &ee):
		out.ExitCode = ee.ExitCode()
		if out.ExitCode < 0 && out.Error == "" {
			out.Error = "killed: " + err.Error()
		}
	default:
		out.ExitCode = -1
		if out.Error == "" {
			out.Error = err.Error()
		}
	}
	if out.Error != "" && out.ExitCode == 0 {
		out.ExitCode = -1
	}
	return out
}

func envList(t Task) []string {
	env := make([]string, 0, len(t.Spec.Env)+4)
	for k, v := range t.Spec.Env {
		env = append(env, k+"="+v)
	}
	return append(env,
		"AQ_FLEET_JOB_ID="+t.JobID,
		"AQ_FLEET_EPOCH="+strconv.FormatUint(t.Epoch, 10),
		"AQ_FLEET_ATTEMPT="+strconv.Itoa(t.Attempt),
		"AQ_FLEET_NATS_URL="+t.NATSURL,
	)
}

// pump splits r into lines, ships each and keeps the tail.
func pump(r io.Reader, stream string, log func(string, []byte), tail *tailBuffer) {
	buf := make([]byte, 32<<10)
	var line []byte
	flush := func() {
		if log != nil && len(line) > 0 {
			log(stream, line)
		}
		line = line[:0]
	}
	for {
		n, err := r.Read(buf)
		chunk := buf[:n]
		tail.Write(chunk)
		for len(chunk) > 0 {
			i := bytes.IndexByte(chunk, '\n')
			if i < 0 {
				line = appendCapped(line, chunk)
				break
			}
			line = appendCapped(line, chunk[:i])
			flush()
			chunk = chunk[i+1:]
		}
		if err != nil {
			flush()
			return
		}
	}
}

func appendCapped(line, b []byte) []byte {
	room := maxLine - len(line)
	if room <= 0 {
		return line
	}
	if len(b) > room {
		b = b[:room]
	}
	return append(line, b...)
}

// tailBuffer keeps the last max bytes written.
type tailBuffer struct {
	mu  sync.Mutex
	max int
	b   []byte
}

func (t *tailBuffer) Write(p []byte) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.b = append(t.b, p...)
	if len(t.b) > t.max {
		t.b = append(t.b[:0], t.b[len(t.b)-t.max:]...)
	}
}

// String returns the tail as valid UTF-8 (a cut rune at the start is dropped).
func (t *tailBuffer) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	b := t.b
	for len(b) > 0 && !utf8.Valid(b) {
		b = b[1:]
	}
	return string(b)
}
