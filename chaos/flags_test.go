package chaos

import (
	"flag"
	"os"
)

// The Makefile's soak target runs
//
//	go test -count=1 -timeout 60m -run TestChaos -v ./chaos -args -chaos.soak -chaos.report=chaos-report.json
var (
	soakFlag = flag.Bool("chaos.soak", false,
		"long mode: longer load and more repetitions of every fault; writes the JSON report (also CHAOS_SOAK=1)")
	reportFlag = flag.String("chaos.report", "",
		"path of the JSON report (default: chaos-report.json in the package directory in long mode, a temporary directory otherwise)")
)

// soak reports whether the suite runs in long mode.
func soak() bool { return *soakFlag || os.Getenv("CHAOS_SOAK") == "1" }

// pick returns short in the default mode and long in soak mode.
func pick[T any](short, long T) T {
	if soak() {
		return long
	}
	return short
}
