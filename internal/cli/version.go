package cli

import (
	"fmt"
	"runtime"
	"runtime/debug"
)

// Version is the release the commands report. A release build sets it:
//
//	go build -ldflags "-X github.com/timerd/timerd/internal/cli.Version=v1.2.0" ./cmd/...
//
// Empty, the commands report the module version the go command stamped
// into the binary (a pseudo-version from the checkout's commit), or
// "devel" when there is none.
var Version string

// Build says what a binary was built from.
type Build struct {
	Version string `json:"version"`
	// Commit is the VCS revision the binary was built from, "" when the
	// go command did not record one (go run, tests, a copy without .git).
	Commit string `json:"commit"`
	// Modified is set when the checkout had uncommitted changes.
	Modified  bool   `json:"modified"`
	GoVersion string `json:"go_version"`
}

// ReadBuild returns the running binary's build.
func ReadBuild() Build {
	b := Build{Version: Version, GoVersion: runtime.Version()}
	bi, ok := debug.ReadBuildInfo()
	if ok {
		if b.Version == "" && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
			b.Version = bi.Main.Version
		}
		for _, s := range bi.Settings {
			switch s.Key {
			case "vcs.revision":
				b.Commit = s.Value
			case "vcs.modified":
				b.Modified = s.Value == "true"
			}
		}
	}
	if b.Version == "" {
		b.Version = "devel"
	}
	return b
}

// CommitLabel is the commit as the metrics label it: the revision, with
// "+modified" when the checkout had changes, or "unknown".
func (b Build) CommitLabel() string {
	switch {
	case b.Commit == "":
		return "unknown"
	case b.Modified:
		return b.Commit + "+modified"
	}
	return b.Commit
}

// Line is the build for --version: the command's name, its version, the
// commit and the Go version, e.g.
//
//	timerd v1.2.0 (commit 2ba9ae9c…, modified) go1.26.0 linux/amd64
func (b Build) Line(name string) string {
	commit := "commit unknown"
	if b.Commit != "" {
		commit = "commit " + b.Commit
	}
	if b.Modified {
		commit += ", modified"
	}
	return fmt.Sprintf("%s %s (%s) %s %s/%s", name, b.Version, commit, b.GoVersion, runtime.GOOS, runtime.GOARCH)
}
