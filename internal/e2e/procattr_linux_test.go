package e2e

import "syscall"

// childAttr makes the kernel kill a started binary if the test binary
// dies before its cleanups run (a -timeout panic, a crash), so no timerd
// outlives the tests. Pdeathsig follows the thread that started the
// child; the runtime keeps its threads alive unless a goroutine exits
// while locked to one, which these tests never do.
func childAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}
