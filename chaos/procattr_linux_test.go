package chaos

import "syscall"

// procAttr puts a started timerd in a process group of its own, so that
// killing the group leaves nothing behind, and makes the kernel kill it
// if the test binary dies before its cleanups run (a -timeout panic, a
// crash). Pdeathsig follows the thread that started the child; the
// runtime keeps its threads alive unless a goroutine exits while locked
// to one, which these tests never do.
func procAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
}

// killGroup sends SIGKILL to the process group of pid (which procAttr
// made pid's own): kill -9 -pid.
func killGroup(pid int) error {
	return syscall.Kill(-pid, syscall.SIGKILL)
}

// stopGroup sends SIGSTOP to the process group of pid: it stops running,
// its sockets stay open, as a long pause or a frozen VM would.
func stopGroup(pid int) error { return syscall.Kill(-pid, syscall.SIGSTOP) }

// contGroup sends SIGCONT to the process group of pid.
func contGroup(pid int) error { return syscall.Kill(-pid, syscall.SIGCONT) }

// termGroup sends SIGTERM to the process group of pid: a graceful stop.
func termGroup(pid int) error { return syscall.Kill(-pid, syscall.SIGTERM) }
