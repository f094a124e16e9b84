package testenv

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

var (
	buildOnce sync.Once
	buildBin  string
	buildErr  error
)

// BuildFleet builds the fleet binary once per test process and returns its
// path. pkg is the import path of the main package.
func BuildFleet(t testing.TB, pkg string) string {
	t.Helper()
	buildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "fleet-bin-")
		if err != nil {
			buildErr = err
			return
		}
		buildBin = filepath.Join(dir, "fleet")
		out, err := exec.Command("go", "build", "-o", buildBin, pkg).CombinedOutput()
		if err != nil {
			buildErr = fmt.Errorf("go build %s: %v\n%s", pkg, err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return buildBin
}

// Process is a child process whose output is captured line by line.
type Process struct {
	t    testing.TB
	cmd  *exec.Cmd
	name string

	mu     sync.Mutex
	stdout []string
	stderr []string
	cond   *sync.Cond
	done   chan struct{}
	err    error
}

// StartProcess starts bin with args and env (added to the test's own). The
// process is killed at cleanup if still running.
func StartProcess(t testing.TB, env []string, bin string, args ...string) *Process {
	t.Helper()
	cmd := exec.Command(bin, args...)
	cmd.Env = append(os.Environ(), env...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	p := &Process{t: t, cmd: cmd, name: filepath.Base(bin) + " " + strings.Join(args, " "), done: make(chan struct{})}
	p.cond = sync.NewCond(&p.mu)
	so, _ := cmd.StdoutPipe()
	se, _ := cmd.StderrPipe()
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", p.name, err)
	}
	var pumps sync.WaitGroup
	pumps.Go(func() { p.pump(so, &p.stdout) })
	pumps.Go(func() { p.pump(se, &p.stderr) })
	go func() {
		pumps.Wait()
		err := cmd.Wait()
		p.mu.Lock()
		p.err = err
		p.mu.Unlock()
		close(p.done)
		p.cond.Broadcast()
	}()
	t.Cleanup(func() {
		select {
		case <-p.done:
		default:
			_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
			<-p.done
		}
		if t.Failed() {
			t.Logf("%s stderr:\n%s", p.name, p.Stderr())
		}
	})
	return p
}

func (p *Process) pump(r io.Reader, into *[]string) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		p.mu.Lock()
		*into = append(*into, sc.Text())
		p.mu.Unlock()
		p.cond.Broadcast()
	}
}

// Pid is the process id.
func (p *Process) Pid() int { return p.cmd.Process.Pid }

// Signal sends sig to the process (not its group).
func (p *Process) Signal(sig syscall.Signal) {
	_ = p.cmd.Process.Signal(sig)
}

// Stdout and Stderr return what the process printed so far.
func (p *Process) Stdout() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return strings.Join(p.stdout, "\n")
}

func (p *Process) Stderr() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return strings.Join(p.stderr, "\n")
}

// WaitLine waits for a stdout or stderr line matching re and returns its submatches.
func (p *Process) WaitLine(d time.Duration, re *regexp.Regexp) []string {
	p.t.Helper()
	deadline := time.Now().Add(d)
	timer := time.AfterFunc(d, p.cond.Broadcast)
	defer timer.Stop()
	p.mu.Lock()
	defer p.mu.Unlock()
	for {
		for _, lines := range [][]string{p.stdout, p.stderr} {
			for _, l := range lines {
				if m := re.FindStringSubmatch(l); m != nil {
					return m
				}
			}
		}
		select {
		case <-p.done:
			p.t.Fatalf("%s exited (%v) before printing %q; stderr:\n%s", p.name, p.err, re, strings.Join(p.stderr, "\n"))
		default:
		}
		if time.Now().After(deadline) {
			p.t.Fatalf("%s: no line matching %q within %v; stderr:\n%s", p.name, re, d, strings.Join(p.stderr, "\n"))
		}
		p.cond.Wait()
	}
}

// Wait waits up to d for the process to exit and returns its exit code.
func (p *Process) Wait(d time.Duration) int {
	p.t.Helper()
	select {
	case <-p.done:
	case <-time.After(d):
		p.t.Fatalf("%s still running after %v", p.name, d)
	}
	var ee *exec.ExitError
	if errors.As(p.err, &ee) {
		return ee.ExitCode()
	}
	if p.err != nil {
		p.t.Fatalf("%s: %v", p.name, p.err)
	}
	return 0
}

// Run runs bin to completion and returns stdout, stderr and the exit code.
func Run(t testing.TB, d time.Duration, env []string, bin string, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Env = append(os.Environ(), env...)
	var so, se bytes.Buffer
	cmd.Stdout, cmd.Stderr = &so, &se
	err := cmd.Run()
	var ee *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &ee) && ctx.Err() == nil:
		code = ee.ExitCode()
	default:
		t.Fatalf("%s %v: %v\nstderr:\n%s", bin, args, err, se.String())
	}
	return so.String(), se.String(), code
}
