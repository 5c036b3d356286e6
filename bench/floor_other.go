//go:build !unix

package bench

// processCPU is unknown where getrusage is missing.
func processCPU() (user, system float64, ok bool) { return 0, 0, false }
