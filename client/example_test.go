package client_test

import (
	"context"
	"errors"
	"fmt"
	"log"
	"sync/atomic"
	"time"

	"google.golang.org/grpc/status"

	"github.com/timerd/timerd/client"
)

// In these examples serverAddr() is the address of a running timerd node,
// such as "127.0.0.1:7070".

func ExampleNew() {
	ctx := context.Background()
	c, err := client.New(ctx, serverAddr(), client.WithNamespace("shop"))
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()

	members, err := c.Members(ctx)
	if err != nil {
		log.Fatal(err)
	}
	for _, m := range members {
		fmt.Println(m.Name, m.State)
	}
	// Output: local alive
}

// A client of a cluster is given a few of its nodes; it finds the others
// and sends each timer to the node that owns it. (This example has no
// cluster to run against, so it is compiled, not run.)
func ExampleNew_cluster() {
	ctx := context.Background()
	c, err := client.New(ctx, "10.0.0.1:7070,10.0.0.2:7070,10.0.0.3:7070",
		client.WithRefreshInterval(2*time.Second))
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()

	if _, err := c.Schedule(ctx, client.Timer{ID: "order-42", Topic: "orders", Delay: time.Hour}); err != nil {
		log.Fatal(err)
	}
	// The deliveries of every node, whichever joins or leaves.
	err = c.Subscribe(ctx, "", "orders", func(ctx context.Context, d *client.Delivery) error {
		fmt.Println("due:", d.ID)
		return nil
	})
	if err != nil {
		log.Fatal(err)
	}
}

func ExampleClient_Schedule() {
	ctx := context.Background()
	c, err := client.New(ctx, serverAddr())
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()

	due, err := c.Schedule(ctx, client.Timer{
		Namespace: "shop",
		ID:        "order-1001",
		Topic:     "order-timeouts",
		Due:       time.Date(2100, 1, 1, 12, 0, 0, 0, time.UTC),
		Payload:   []byte(`{"order":1001}`),
	})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("due", due.UTC())

	// A delay is turned into a due time before the request is sent.
	before := time.Now()
	due, err = c.Schedule(ctx, client.Timer{Namespace: "shop", ID: "order-1002", Topic: "order-timeouts", Delay: time.Hour})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("due in about an hour:", due.Sub(before) >= time.Hour && due.Sub(before) < time.Hour+time.Minute)
	// Output:
	// due 2100-01-01 12:00:00 +0000 UTC
	// due in about an hour: true
}

func ExampleClient_ScheduleBatch() {
	ctx := context.Background()
	c, err := client.New(ctx, serverAddr(), client.WithNamespace("batch"))
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()

	due := time.Date(2100, 1, 1, 0, 0, 0, 0, time.UTC)
	results, err := c.ScheduleBatch(ctx, []client.Timer{
		{ID: "a", Topic: "t", Due: due},
		{ID: "b", Topic: "t", Due: due},
		{ID: "a", Topic: "t", Due: due},                     // the same again: fine
		{ID: "b", Topic: "t", Due: due.Add(time.Hour)},      // another spec
		{ID: "c", Topic: "not a topic!", Due: due},          // invalid
		{ID: "d", Topic: "t", Due: due, Delay: time.Second}, // refused by the client
	})
	if err != nil {
		log.Fatal(err) // the RPC as a whole failed
	}
	for _, r := range results {
		switch {
		case r.Err == nil:
			fmt.Println(r.ID, "ok", r.Due.UTC().Format(time.DateOnly))
		case errors.Is(r.Err, client.ErrExists):
			fmt.Println(r.ID, "exists with another spec")
		case errors.Is(r.Err, client.ErrInvalid):
			fmt.Println(r.ID, "invalid, code", status.Code(r.Err))
		default:
			fmt.Println(r.ID, r.Err)
		}
	}
	// Output:
	// a ok 2100-01-01
	// b ok 2100-01-01
	// a ok 2100-01-01
	// b exists with another spec
	// c invalid, code InvalidArgument
	// d invalid, code InvalidArgument
}

func ExampleClient_Reschedule() {
	ctx := context.Background()
	c, err := client.New(ctx, serverAddr(), client.WithNamespace("reschedule"))
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()

	if _, err := c.Schedule(ctx, client.Timer{ID: "reminder", Topic: "reminders", Due: time.Date(2100, 1, 1, 9, 0, 0, 0, time.UTC)}); err != nil {
		log.Fatal(err)
	}
	due, err := c.Reschedule(ctx, "", "reminder", time.Date(2100, 1, 2, 9, 0, 0, 0, time.UTC))
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("moved to", due.UTC())

	_, err = c.Reschedule(ctx, "", "no-such-reminder", due)
	fmt.Println("unknown id:", errors.Is(err, client.ErrNotFound))
	// Output:
	// moved to 2100-01-02 09:00:00 +0000 UTC
	// unknown id: true
}

func ExampleClient_RescheduleBatch() {
	ctx := context.Background()
	c, err := client.New(ctx, serverAddr(), client.WithNamespace("reschedule-batch"))
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()

	due := time.Date(2100, 1, 1, 0, 0, 0, 0, time.UTC)
	if _, err := c.ScheduleBatch(ctx, []client.Timer{{ID: "x", Topic: "t", Due: due}, {ID: "y", Topic: "t", Due: due}}); err != nil {
		log.Fatal(err)
	}
	results, err := c.RescheduleBatch(ctx, "", []client.Move{
		{ID: "x", Due: due.AddDate(0, 1, 0)},
		{ID: "y", Due: due.AddDate(0, 2, 0)},
		{ID: "z", Due: due},
	})
	if err != nil {
		log.Fatal(err)
	}
	for _, r := range results {
		if r.Err != nil {
			fmt.Println(r.ID, "not found:", errors.Is(r.Err, client.ErrNotFound))
			continue
		}
		fmt.Println(r.ID, r.Due.UTC().Format(time.DateOnly))
	}
	// Output:
	// x 2100-02-01
	// y 2100-03-01
	// z not found: true
}

func ExampleClient_Cancel() {
	ctx := context.Background()
	c, err := client.New(ctx, serverAddr(), client.WithNamespace("cancel"))
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()

	if _, err := c.Schedule(ctx, client.Timer{ID: "hold-7", Topic: "holds", Delay: time.Hour}); err != nil {
		log.Fatal(err)
	}
	results, err := c.Cancel(ctx, "", "hold-7", "hold-8")
	if err != nil {
		log.Fatal(err)
	}
	for _, r := range results {
		switch {
		case r.Err == nil:
			fmt.Println(r.ID, "cancelled")
		case errors.Is(r.Err, client.ErrNotFound):
			fmt.Println(r.ID, "was not there")
		default:
			fmt.Println(r.ID, r.Err)
		}
	}
	// Output:
	// hold-7 cancelled
	// hold-8 was not there
}

func ExampleClient_Get() {
	ctx := context.Background()
	c, err := client.New(ctx, serverAddr(), client.WithNamespace("get"))
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()

	if _, err := c.Schedule(ctx, client.Timer{ID: "invoice-9", Topic: "invoices", Due: time.Date(2100, 6, 1, 0, 0, 0, 0, time.UTC), Payload: []byte("remind")}); err != nil {
		log.Fatal(err)
	}
	info, err := c.Get(ctx, "", "invoice-9")
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(info.Namespace, info.ID, info.Topic, info.State, info.Due.UTC(), string(info.Payload))

	_, err = c.Get(ctx, "", "invoice-10")
	fmt.Println(errors.Is(err, client.ErrNotFound), status.Code(err))
	// Output:
	// get invoice-9 invoices pending 2100-06-01 00:00:00 +0000 UTC remind
	// true NotFound
}

func ExampleClient_Subscribe() {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	c, err := client.New(ctx, serverAddr(), client.WithNamespace("subscribe"))
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()

	if _, err := c.Schedule(ctx, client.Timer{ID: "ping", Topic: "pings", Delay: 50 * time.Millisecond, Payload: []byte("hello")}); err != nil {
		log.Fatal(err)
	}

	sctx, stop := context.WithCancel(ctx)
	err = c.Subscribe(sctx, "", "pings", func(ctx context.Context, d *client.Delivery) error {
		fmt.Printf("%s: %s (attempt %d, on time: %v)\n", d.ID, d.Payload, d.Attempt, !d.Fired.Before(d.Due))
		stop()     // one is enough for this example
		return nil // acknowledged: a one-shot timer is then gone
	})
	fmt.Println("subscribe returned", err)
	// Output:
	// ping: hello (attempt 1, on time: true)
	// subscribe returned <nil>
}

func ExampleClient_NewScheduler() {
	ctx := context.Background()
	c, err := client.New(ctx, serverAddr(), client.WithNamespace("scheduler"))
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()

	s, err := c.NewScheduler(client.SchedulerConfig{MaxBatch: 500})
	if err != nil {
		log.Fatal(err)
	}
	var ok, failed atomic.Int64
	done := func(r client.Result) {
		if r.Err != nil {
			failed.Add(1)
			return
		}
		ok.Add(1)
	}
	for i := range 5000 {
		t := client.Timer{ID: fmt.Sprintf("job-%d", i), Topic: "jobs", Delay: 24 * time.Hour}
		if err := s.Add(ctx, t, done); err != nil {
			log.Fatal(err)
		}
	}
	if err := s.Close(ctx); err != nil { // flushes
		log.Fatal(err)
	}
	fmt.Println(ok.Load(), "scheduled,", failed.Load(), "failed")
	// Output: 5000 scheduled, 0 failed
}

func ExampleScheduler_Schedule() {
	ctx := context.Background()
	c, err := client.New(ctx, serverAddr(), client.WithNamespace("scheduler-sync"))
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()
	s, err := c.NewScheduler(client.SchedulerConfig{})
	if err != nil {
		log.Fatal(err)
	}
	defer s.Close(ctx)

	// Many goroutines calling Schedule share batches.
	due, err := s.Schedule(ctx, client.Timer{ID: "one", Topic: "jobs", Due: time.Date(2100, 1, 1, 0, 0, 0, 0, time.UTC)})
	fmt.Println(due.UTC(), err)
	// Output: 2100-01-01 00:00:00 +0000 UTC <nil>
}

func ExampleClient_ListDeadLetters() {
	ctx := context.Background()
	// A handler that always fails made "mail-1" a dead letter.
	if err := deadLetter(serverAddr(), "list", "mail", "mail-1"); err != nil {
		log.Fatal(err)
	}
	c, err := client.New(ctx, serverAddr(), client.WithNamespace("list"))
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()

	token := ""
	for {
		page, err := c.ListDeadLetters(ctx, "", "mail", 100, token)
		if err != nil {
			log.Fatal(err)
		}
		for _, d := range page.DeadLetters {
			fmt.Println(d.ID, d.State, d.Attempts, "attempts")
		}
		if page.NextPageToken == "" {
			break
		}
		token = page.NextPageToken
	}
	// Output: mail-1 dead 3 attempts
}

func ExampleClient_DeadLetters() {
	ctx := context.Background()
	if err := deadLetter(serverAddr(), "iterate", "mail", "mail-2"); err != nil {
		log.Fatal(err)
	}
	c, err := client.New(ctx, serverAddr(), client.WithNamespace("iterate"))
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()

	for d, err := range c.DeadLetters(ctx, "", "") {
		if err != nil {
			log.Fatal(err)
		}
		fmt.Println(d.ID, d.Topic, d.State)
	}
	// Output: mail-2 mail dead
}

func ExampleClient_ReplayDeadLetters() {
	ctx := context.Background()
	if err := deadLetter(serverAddr(), "replay", "mail", "mail-3"); err != nil {
		log.Fatal(err)
	}
	c, err := client.New(ctx, serverAddr(), client.WithNamespace("replay"))
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()

	res, err := c.ReplayDeadLetters(ctx, client.Replay{IDs: []string{"mail-3"}, Due: time.Date(2100, 1, 1, 0, 0, 0, 0, time.UTC)})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("replayed", res.Replayed, res.Results[0].Err)

	// A second replay finds it pending again.
	res, err = c.ReplayDeadLetters(ctx, client.Replay{IDs: []string{"mail-3"}})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("replayed", res.Replayed, errors.Is(res.Results[0].Err, client.ErrNotDead))
	// Output:
	// replayed 1 <nil>
	// replayed 0 true
}

func ExampleClient_Members() {
	ctx := context.Background()
	c, err := client.New(ctx, serverAddr())
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()

	members, err := c.Members(ctx)
	if err != nil {
		log.Fatal(err)
	}
	for _, m := range members {
		fmt.Println(m.Name, m.State, m.ShardsOwned, "shards")
	}
	// Output: local alive 4 shards
}

func ExampleClient_ShardMap() {
	ctx := context.Background()
	c, err := client.New(ctx, serverAddr())
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()

	m, err := c.ShardMap(ctx)
	if err != nil {
		log.Fatal(err)
	}
	owners := map[string]int{}
	for _, s := range m.Shards {
		owners[s.Owner]++
	}
	fmt.Println(m.ShardCount, "shards:", owners)
	// Output: 4 shards: map[local:4]
}
