// Package cli holds what timerd's two commands, cmd/timerd and
// cmd/timerctl, share on their command lines: the build's version, flag
// errors that read as one line, and durations written as a person would
// write them.
package cli
