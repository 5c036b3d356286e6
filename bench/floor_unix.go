//go:build unix

package bench

import "syscall"

// processCPU is the user and system CPU time of this process in seconds.
func processCPU() (user, system float64, ok bool) {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0, 0, false
	}
	sec := func(t syscall.Timeval) float64 { return float64(t.Sec) + float64(t.Usec)/1e6 }
	return sec(ru.Utime), sec(ru.Stime), true
}
