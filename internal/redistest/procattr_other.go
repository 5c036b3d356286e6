//go:build !linux

package redistest

import "syscall"

// sysProcAttr has nothing to add outside Linux: there the server relies on
// the tests' cleanups alone.
func sysProcAttr() *syscall.SysProcAttr { return nil }
