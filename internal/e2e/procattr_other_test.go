//go:build !linux

package e2e

import "syscall"

// childAttr adds nothing outside Linux: there the tests' cleanups alone
// stop the binaries they started.
func childAttr() *syscall.SysProcAttr { return nil }
