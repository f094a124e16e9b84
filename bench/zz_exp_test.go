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
		for _, b := range []int{1, 4, 16, 32, 64} {
			drainBatch = b
			for i := 0; i < 2; i++ {
				res, err := RawDrain(context.Background(), RawConfig{URL: url, Jobs: 20000, Workers: 16})
				if err != nil {
					t.Fatal(err)
				}
				t.Logf("sync=%v batch=%d: %v %.0f/s", sync, b, res.Elapsed, res.PerSec)
			}
		}
	}
}
