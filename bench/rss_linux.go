//go:build linux

package bench

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"strconv"
)

// ProcessRSS returns the current resident set size of this process in bytes,
// read from the VmRSS line of /proc/self/status.
func ProcessRSS() (uint64, error) {
	f, err := os.Open("/proc/self/status")
	if err != nil {
		return 0, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := sc.Bytes()
		rest, ok := bytes.CutPrefix(line, []byte("VmRSS:"))
		if !ok {
			continue
		}
		fields := bytes.Fields(rest)
		if len(fields) == 0 {
			return 0, fmt.Errorf("bench: malformed VmRSS line %q", line)
		}
		v, err := strconv.ParseUint(string(fields[0]), 10, 64)
		if err != nil {
			return 0, fmt.Errorf("bench: parse VmRSS: %w", err)
		}
		mult := uint64(1024) // the kernel reports kB
		if len(fields) > 1 {
			switch string(fields[1]) {
			case "kB":
				mult = 1024
			case "mB", "MB":
				mult = 1024 * 1024
			case "B":
				mult = 1
			}
		}
		return v * mult, nil
	}
	if err := sc.Err(); err != nil {
		return 0, err
	}
	return 0, fmt.Errorf("bench: VmRSS not found in /proc/self/status")
}
