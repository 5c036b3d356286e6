package chaos

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/types/known/durationpb"

	pb "github.com/timerd/timerd/api/timerd/v1"
)

// A subscriber process is the test binary run again with subProcEnv set:
// TestSubscriberProcess then opens one Subscribe stream, writes every
// delivery it receives to its stdout as a line and acks none of them, until
// it is killed. A subscriber that dies with deliveries it never acked needs
// a process the kernel tears down (its socket closed by the kernel, not by
// a client library's orderly end), and the test binary is one that needs
// no build of its own.
const (
	// subProcEnv carries the subscription, as
	// addr|namespace|topic|max_in_flight|ack_timeout.
	subProcEnv = "TIMERD_CHAOS_SUBSCRIBER"
	// subProcLine starts each delivery line, followed by its JSON.
	subProcLine = "chaos-delivery "
	// subProcStart bounds the wait for a subscriber process to open its
	// stream.
	subProcStart = 30 * time.Second
)

// subProcDelivery is a delivery as a subscriber process writes it.
type subProcDelivery struct {
	ID         string `json:"id"`
	DeliveryID string `json:"delivery_id"`
	DueNS      int64  `json:"due_ns"`
	FiredNS    int64  `json:"fired_ns"`
	ReceivedNS int64  `json:"received_ns"` // the process's clock, which is the test's
	Attempt    uint32 `json:"attempt"`
	Shard      uint32 `json:"shard"`
	Epoch      uint64 `json:"epoch"`
	PayloadOK  bool   `json:"payload_ok"`
}

// TestSubscriberProcess is the body of a subscriber process; run as a test
// of its own, without subProcEnv, it does nothing.
func TestSubscriberProcess(t *testing.T) {
	spec := os.Getenv(subProcEnv)
	if spec == "" {
		t.Skip("the body of a subscriber process the chaos scenarios start: " + subProcEnv + " is unset")
	}
	parts := strings.Split(spec, "|")
	if len(parts) != 5 {
		t.Fatalf("%s=%q: want addr|namespace|topic|max_in_flight|ack_timeout", subProcEnv, spec)
	}
	credit, err := strconv.ParseUint(parts[3], 10, 32)
	if err != nil {
		t.Fatalf("%s: max_in_flight %q: %v", subProcEnv, parts[3], err)
	}
	ackTimeout, err := time.ParseDuration(parts[4])
	if err != nil {
		t.Fatalf("%s: ack_timeout %q: %v", subProcEnv, parts[4], err)
	}
	conn, err := grpc.NewClient(parts[0], grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatalf("dial %s: %v", parts[0], err)
	}
	defer conn.Close()
	st, err := pb.NewTimerServiceClient(conn).Subscribe(context.Background())
	if err != nil {
		t.Fatalf("Subscribe: %v", err)
	}
	sub := &pb.Subscription{Namespace: parts[1], Topic: parts[2], MaxInFlight: uint32(credit), AckTimeout: durationpb.New(ackTimeout)}
	if err := st.Send(&pb.SubscribeRequest{Kind: &pb.SubscribeRequest_Subscription{Subscription: sub}}); err != nil {
		t.Fatalf("Subscribe: send the subscription: %v", err)
	}
	out := bufio.NewWriter(os.Stdout)
	fmt.Fprintln(out, "chaos-subscribed")
	out.Flush()
	for {
		m, err := st.Recv()
		if err != nil {
			t.Fatalf("stream ended: %v", err)
		}
		d := m.GetDelivery()
		b, _ := json.Marshal(subProcDelivery{
			ID: d.GetId(), DeliveryID: d.GetDeliveryId(), DueNS: d.GetDueTime().AsTime().UnixNano(),
			FiredNS: d.GetFiredTime().AsTime().UnixNano(), ReceivedNS: time.Now().UnixNano(),
			Attempt: d.GetAttempt(), Shard: d.GetShard(), Epoch: d.GetEpoch(), PayloadOK: string(d.GetPayload()) == d.GetId(),
		})
		fmt.Fprintf(out, "%s%s\n", subProcLine, b)
		out.Flush() // each line as it comes: the process dies by SIGKILL
	}
}

// subProc is a running subscriber process.
type subProc struct {
	cmd    *exec.Cmd
	exited chan struct{} // closed once it has exited and its output is read

	mu  sync.Mutex
	got []delivery
}

// startSubscriberProcess starts a subscriber process on node i of c for
// the workload's namespace and topic, with the credit and ack timeout
// given, in a process group of its own that the test's cleanup kills, and
// returns once it has sent its subscription. Its deliveries go to r's
// ledger too.
func startSubscriberProcess(r *run, c *testCluster, i int, credit uint32, ackTimeout time.Duration) *subProc {
	t := r.t
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run", "^TestSubscriberProcess$", "-test.count", "1")
	cmd.Env = append(childEnv(), fmt.Sprintf("%s=%s|%s|%s|%d|%v", subProcEnv, c.node(i).grpcAddr, namespace, topic, credit, ackTimeout))
	cmd.SysProcAttr = procAttr()
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start a subscriber process: %v", err)
	}
	p := &subProc{cmd: cmd, exited: make(chan struct{})}
	t.Cleanup(p.kill9)
	subscribed := make(chan struct{})
	go func() {
		defer close(p.exited)
		sc := bufio.NewScanner(stdout)
		sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
		for sc.Scan() {
			line := sc.Text()
			if line == "chaos-subscribed" {
				close(subscribed)
				continue
			}
			js, ok := strings.CutPrefix(line, subProcLine)
			if !ok {
				continue // the test framework's own lines
			}
			var d subProcDelivery
			if err := json.Unmarshal([]byte(js), &d); err != nil {
				continue // a line cut by the kill
			}
			got := delivery{id: d.ID, deliveryID: d.DeliveryID, due: time.Unix(0, d.DueNS),
				fired: time.Unix(0, d.FiredNS), received: time.Unix(0, d.ReceivedNS), attempt: d.Attempt,
				shard: d.Shard, epoch: d.Epoch, node: i, payloadOK: d.PayloadOK}
			r.ledger.deliver(got)
			p.mu.Lock()
			p.got = append(p.got, got)
			p.mu.Unlock()
		}
		_ = cmd.Wait()
	}()
	select {
	case <-subscribed:
	case <-p.exited:
		t.Fatalf("the subscriber process exited before it subscribed: %v", cmd.ProcessState)
	case <-time.After(subProcStart):
		t.Fatalf("the subscriber process did not subscribe within %v", subProcStart)
	}
	return p
}

// deliveries returns what the process has written so far.
func (p *subProc) deliveries() []delivery {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]delivery(nil), p.got...)
}

// kill9 kills the process with SIGKILL, if it still runs, and waits until
// it has exited and its output is read. Safe to call twice.
func (p *subProc) kill9() {
	select {
	case <-p.exited:
		return
	default:
	}
	_ = killGroup(p.cmd.Process.Pid)
	select {
	case <-p.exited:
	case <-time.After(10 * time.Second):
	}
}
