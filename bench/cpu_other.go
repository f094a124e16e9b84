//go:build !unix

package bench

import "time"

// processCPU is only implemented on unix; elsewhere it reports 0.
func processCPU() time.Duration { return 0 }
