// Command ledgerclient is the side effect of the chaos suite's checker jobs.
//
//	ledgerclient stamp         prints the current time (Unix nanoseconds)
//	ledgerclient write STAMP   records "this job, this epoch" in the ledger
//
// A checker job runs
//
//	t=$(ledgerclient stamp) && fleet lease check && ledgerclient write "$t"
//
// so the ledger learns, with each write, when the lease check that allowed
// it began. write reads AQ_FLEET_JOB_ID and AQ_FLEET_EPOCH (set by the
// factory) and CHAOS_LEDGER (the ledger's host:port). It exits 0 when the
// ledger accepted the write, 1 when the ledger refused it (a lower epoch than
// one it already accepted), 2 on any other error.
package main

import (
	"bufio"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"time"
)

func main() {
	os.Exit(run(os.Args[1:]))
}

func run(args []string) int {
	if len(args) == 1 && args[0] == "stamp" {
		fmt.Println(time.Now().UnixNano())
		return 0
	}
	if len(args) != 2 || args[0] != "write" {
		fmt.Fprintln(os.Stderr, "usage: ledgerclient stamp | ledgerclient write STAMP")
		return 2
	}
	stamp, err := strconv.ParseInt(args[1], 10, 64)
	if err != nil || stamp <= 0 {
		fmt.Fprintf(os.Stderr, "ledgerclient: bad stamp %q\n", args[1])
		return 2
	}
	jobID, epoch, addr := os.Getenv("AQ_FLEET_JOB_ID"), os.Getenv("AQ_FLEET_EPOCH"), os.Getenv("CHAOS_LEDGER")
	if jobID == "" || epoch == "" || addr == "" {
		fmt.Fprintln(os.Stderr, "ledgerclient: AQ_FLEET_JOB_ID, AQ_FLEET_EPOCH and CHAOS_LEDGER must be set")
		return 2
	}
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		fmt.Fprintln(os.Stderr, "ledgerclient:", err)
		return 2
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := fmt.Fprintf(c, "W %s %s %d\n", jobID, epoch, stamp); err != nil {
		fmt.Fprintln(os.Stderr, "ledgerclient:", err)
		return 2
	}
	reply, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		fmt.Fprintln(os.Stderr, "ledgerclient: no reply:", err)
		return 2
	}
	reply = strings.TrimSpace(reply)
	switch {
	case reply == "OK":
		fmt.Printf("effect recorded: job %s epoch %s\n", jobID, epoch)
		return 0
	case strings.HasPrefix(reply, "REFUSED"):
		fmt.Fprintln(os.Stderr, "ledgerclient: effect refused:", strings.TrimSpace(strings.TrimPrefix(reply, "REFUSED")))
		return 1
	default:
		fmt.Fprintln(os.Stderr, "ledgerclient:", reply)
		return 2
	}
}
