package bench

import (
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"strings"
)

// Output says how a run's report is shown.
type Output struct {
	// JSON prints the report as JSON instead of the summary table.
	JSON bool
	// Dir, when set, also gets report.md, report.html, report.json and the
	// plots (WriteDir).
	Dir string
	// Log receives the line that names the files written; nil for none.
	Log io.Writer
}

// Write shows rep on w as o says, then returns rep.Err.
func (o Output) Write(w io.Writer, rep *Report) error {
	var err error
	if o.JSON {
		err = WriteJSON(w, rep)
	} else {
		err = WriteTable(w, rep)
	}
	if err != nil {
		return err
	}
	if o.Dir != "" {
		if err := WriteDir(o.Dir, rep); err != nil {
			return err
		}
		if o.Log != nil {
			fmt.Fprintf(o.Log, "report written to %s\n", filepath.Join(o.Dir, "report.md"))
		}
	}
	return rep.Err()
}

// Err is nil for a run whose checks all hold and whose target did not
// fail; otherwise it names the failed checks, or the target's failure.
// An interrupted run's partial figures are no error.
func (r *Report) Err() error {
	if bad := r.Failed(); len(bad) > 0 {
		names := make([]string, len(bad))
		for i, c := range bad {
			names[i] = fmt.Sprintf("%s: %d, want %d", c.Name, c.Got, c.Want)
		}
		return fmt.Errorf("checks failed: %s", strings.Join(names, "; "))
	}
	if r.Error != "" {
		return errors.New(r.Error)
	}
	return nil
}
