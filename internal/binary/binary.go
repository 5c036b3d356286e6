// Package binary builds timerd's commands into a directory, for the tests
// that run them as real processes (the end-to-end tests and the fault
// tests). It finds the go command on PATH or in $GOROOT/bin.
//
// It must not be imported outside tests.
package binary

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
)

// Build builds each of the commands (names under ./cmd, e.g. "timerd")
// into dir and returns their paths, in the same order.
func Build(dir string, commands ...string) ([]string, error) {
	goCmd, err := GoCommand()
	if err != nil {
		return nil, err
	}
	paths := make([]string, len(commands))
	for i, name := range commands {
		paths[i] = filepath.Join(dir, name)
		out, err := exec.Command(goCmd, "build", "-o", paths[i], "github.com/timerd/timerd/cmd/"+name).CombinedOutput()
		if err != nil {
			return nil, fmt.Errorf("%s build -o %s ./cmd/%s: %w\n%s", goCmd, paths[i], name, err, out)
		}
	}
	return paths, nil
}

// GoCommand finds the go command: on PATH, or in $GOROOT/bin.
func GoCommand() (string, error) {
	if p, err := exec.LookPath("go"); err == nil {
		return p, nil
	}
	if root := os.Getenv("GOROOT"); root != "" {
		p := filepath.Join(root, "bin", "go")
		if _, err := os.Stat(p); err == nil {
			return p, nil
		}
	}
	return "", errors.New("the go command is neither on PATH nor in $GOROOT/bin; it is needed to build timerd's commands")
}
