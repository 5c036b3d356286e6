//go:build !linux

package chaos

import (
	"errors"
	"os"
	"syscall"
)

// procAttr has nothing to add outside Linux: the processes rely on the
// tests' cleanups alone.
func procAttr() *syscall.SysProcAttr { return nil }

// killGroup kills the process pid, which outside Linux has no group of
// its own.
func killGroup(pid int) error {
	p, err := os.FindProcess(pid)
	if err != nil {
		return err
	}
	return p.Kill()
}

// stopGroup and contGroup need Linux's signals to process groups.
func stopGroup(int) error { return errors.ErrUnsupported }
func contGroup(int) error { return errors.ErrUnsupported }

// termGroup asks the process pid to stop.
func termGroup(pid int) error {
	p, err := os.FindProcess(pid)
	if err != nil {
		return err
	}
	return p.Signal(os.Interrupt)
}
