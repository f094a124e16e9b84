package bench

import (
	"context"
	"os"
	"testing"
)

func TestExpBatch(t *testing.T) {
	if os.Getenv("EXP") == "" {
		t.Skip()
	}
	for _, sync := range []bool{false, true} {
		url := startServer(t, sync)
		for _, pw := range []bool{false, true} {
		perWorkerConn = pw
		for _, b := range []int{16, 32} {
			drainBatch = b
			for i := 0; i < 3; i++ {
				res, err := RawDrain(context.Background(), RawConfig{URL: url, Jobs: 20000, Workers: 16})
				if err != nil {
					t.Fatal(err)
				}
				t.Logf("sync=%v perworker=%v batch=%d: %v %.0f/s", sync, pw, b, res.Elapsed, res.PerSec)
			}
		}
		}
	}
}
