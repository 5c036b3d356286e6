package redistest

import "syscall"

// sysProcAttr asks the kernel to kill redis-server when the test binary
// dies without running its cleanups (a -timeout panic, a crash), so no
// server outlives its test. Pdeathsig fires when the thread that started
// the child exits; the Go runtime does not end threads except those of
// goroutines that exit while locked to their thread, which tests do not do.
func sysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}
