//go:build !linux

package bench

// ProcessRSS is only implemented on linux; elsewhere it reports 0, nil.
func ProcessRSS() (uint64, error) { return 0, nil }
