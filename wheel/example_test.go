package wheel_test

import (
	"fmt"
	"time"

	"github.com/timerd/timerd/wheel"
)

// The owner of a wheel keeps its own table of timers, passes their indices
// as values, sleeps until Next and then calls Advance with the time.
func Example() {
	start := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC).UnixMilli()
	w, err := wheel.New(wheel.DefaultConfig(start))
	if err != nil {
		panic(err)
	}

	names := []string{"order-17 timeout", "reminder", "retry"}
	w.Add(start+1500, 0)
	h, _ := w.Add(start+300, 1)
	w.Add(start+300, 2)
	w.Cancel(h) // the reminder is no longer wanted

	var fired []wheel.Timer
	for w.Len() > 0 {
		next, _ := w.Next() // an owner would sleep until then
		fired = w.Advance(next, fired[:0])
		for _, t := range fired {
			fmt.Printf("+%dms %s\n", next-start, names[t.Value])
		}
	}
	// Output:
	// +300ms retry
	// +1500ms order-17 timeout
}
