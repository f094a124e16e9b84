//go:build linux

package chaos

import (
	"bytes"
	"os"
	"strconv"
	"strings"
	"syscall"
)

// proc is one process found under /proc.
type proc struct {
	pid, ppid, pgid int
	state           byte // R, S, T, Z, ...
	comm            string
}

// procsWithEnv lists the live processes whose initial environment holds the
// exact entry kv ("NAME=value"). Children inherit the environment, so a
// marker set on a factory (or in a job's spec) finds everything it started,
// orphans included.
func procsWithEnv(kv string) []proc {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	want := []byte(kv)
	var out []proc
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		env, err := os.ReadFile("/proc/" + e.Name() + "/environ")
		if err != nil {
			continue
		}
		found := false
		for entry := range bytes.SplitSeq(env, []byte{0}) {
			if bytes.Equal(entry, want) {
				found = true
				break
			}
		}
		if !found {
			continue
		}
		if p, ok := readProc(pid); ok && p.state != 'Z' {
			out = append(out, p)
		}
	}
	return out
}

// readProc parses /proc/<pid>/stat.
func readProc(pid int) (proc, bool) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return proc{}, false
	}
	s := string(b)
	open, closing := strings.IndexByte(s, '('), strings.LastIndexByte(s, ')')
	if open < 0 || closing < open {
		return proc{}, false
	}
	f := strings.Fields(s[closing+1:])
	if len(f) < 3 || len(f[0]) == 0 {
		return proc{}, false
	}
	ppid, _ := strconv.Atoi(f[1])
	pgid, _ := strconv.Atoi(f[2])
	return proc{pid: pid, ppid: ppid, pgid: pgid, state: f[0][0], comm: s[open+1 : closing]}, true
}

// signalGroups sends sig to the process group of every process in ps except
// the groups in skip, each group once, and returns the groups signalled.
func signalGroups(ps []proc, sig syscall.Signal, skip map[int]bool) []int {
	seen := map[int]bool{}
	var groups []int
	for _, p := range ps {
		if p.pgid <= 1 || seen[p.pgid] || skip[p.pgid] {
			continue
		}
		seen[p.pgid] = true
		if syscall.Kill(-p.pgid, sig) == nil {
			groups = append(groups, p.pgid)
		}
	}
	return groups
}
