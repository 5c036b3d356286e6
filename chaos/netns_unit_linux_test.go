package chaos

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// netLabHelperEnv makes the test binary, started again inside a
// namespace, act as TestNetLabHelper says instead of running tests.
const netLabHelperEnv = "CHAOS_NETLAB_HELPER"

// netLabEchoPort is the port the helper echoes on, TCP and UDP: every
// namespace is fresh, so a fixed port is free in each.
const netLabEchoPort = "7946"

// netLabProbeTimeout bounds one TCP or UDP round trip of a probe; a cut
// path spends all of it.
const netLabProbeTimeout = time.Second

// TestNetLabHelper is not a test: it is the process the netLab tests
// start inside a namespace. "serve <addr>" echoes on addr over TCP and
// UDP until its stdin closes; "probe <addr>" makes one TCP and one UDP
// round trip to addr and prints "tcp=<result> udp=<result>".
func TestNetLabHelper(t *testing.T) {
	mode, addr, ok := strings.Cut(os.Getenv(netLabHelperEnv), " ")
	if !ok {
		t.Skip("the process the netLab tests start in a namespace")
	}
	switch mode {
	case "serve":
		if err := echoServe(addr); err != nil {
			fmt.Println("error:", err)
			os.Exit(1)
		}
	case "probe":
		fmt.Printf("tcp=%s udp=%s\n", result(probeTCP(addr)), result(probeUDP(addr)))
	default:
		fmt.Println("error: unknown mode", mode)
		os.Exit(1)
	}
	os.Exit(0)
}

// echoServe echoes on addr, TCP and UDP, and prints "ready" once it
// listens; it returns when stdin closes.
func echoServe(addr string) error {
	stop, err := startEcho(addr)
	if err != nil {
		return err
	}
	defer stop()
	fmt.Println("ready")
	_, _ = io.Copy(io.Discard, os.Stdin)
	return nil
}

// startEcho echoes on addr, TCP and UDP, until stop is called.
func startEcho(addr string) (stop func(), err error) {
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, err
	}
	pc, err := net.ListenPacket("udp", addr)
	if err != nil {
		l.Close()
		return nil, err
	}
	go func() { // ends when l closes
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				_, _ = io.Copy(c, c)
			}()
		}
	}()
	go func() { // ends when pc closes
		buf := make([]byte, 1500)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			_, _ = pc.WriteTo(buf[:n], from)
		}
	}()
	return func() { l.Close(); pc.Close() }, nil
}

func result(err error) string {
	if err != nil {
		return "cut"
	}
	return "ok"
}

// probeTCP connects to addr and has "ping" echoed back.
func probeTCP(addr string) error {
	c, err := net.DialTimeout("tcp", addr, netLabProbeTimeout)
	if err != nil {
		return err
	}
	defer c.Close()
	return echoOnce(c)
}

// probeUDP sends "ping" to addr and waits for its echo.
func probeUDP(addr string) error {
	c, err := net.Dial("udp", addr)
	if err != nil {
		return err
	}
	defer c.Close()
	return echoOnce(c)
}

func echoOnce(c net.Conn) error {
	if err := c.SetDeadline(time.Now().Add(netLabProbeTimeout)); err != nil {
		return err
	}
	if _, err := c.Write([]byte("ping")); err != nil {
		return err
	}
	buf := make([]byte, 4)
	if _, err := io.ReadFull(c, buf); err != nil {
		return err
	}
	if string(buf) != "ping" {
		return fmt.Errorf("echo %q, want ping", buf)
	}
	return nil
}

// helper starts the test binary inside host i's namespace as
// TestNetLabHelper in mode on addr, in a process group the test's
// cleanup kills, and returns it and its output. Its stdin stays open
// until the cleanup.
func (l *netLab) helper(t *testing.T, i int, mode, addr string) (*exec.Cmd, *bufio.Reader) {
	t.Helper()
	argv := append(l.wrap(i), os.Args[0], "-test.run=^TestNetLabHelper$", "-test.count=1")
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Env = append(os.Environ(), netLabHelperEnv+"="+mode+" "+addr)
	cmd.SysProcAttr = procAttr()
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start the helper in host %d: %v", i, err)
	}
	t.Cleanup(func() {
		_ = stdin.Close()
		_ = killGroup(cmd.Process.Pid)
		_ = cmd.Wait()
	})
	return cmd, bufio.NewReader(stdout)
}

// probe runs a probe from host i to addr and returns what it printed.
func (l *netLab) probe(t *testing.T, i int, addr string) string {
	t.Helper()
	cmd, out := l.helper(t, i, "probe", addr)
	line, err := out.ReadString('\n')
	if err != nil {
		t.Fatalf("probe from host %d to %s: %v", i, addr, err)
	}
	_ = cmd.Wait()
	return strings.TrimSpace(line)
}

// TestNetLab builds three namespaces and checks, over TCP and UDP, that
// they reach each other, the bridge's address and the test process; that
// a partition {0} | {1, 2} cuts host 0 from 1 and 2 but from nothing
// else; and that heal restores every path. It needs root, ip and
// iptables (it fails under CI without them, and skips elsewhere).
func TestNetLab(t *testing.T) {
	l := newNetLab(t, 3)
	echo := func(i int) string { return net.JoinHostPort(l.ip(i), netLabEchoPort) }
	for i := range 3 {
		_, out := l.helper(t, i, "serve", echo(i))
		line, err := out.ReadString('\n')
		if err != nil || strings.TrimSpace(line) != "ready" {
			t.Fatalf("echo server in host %d: %q, %v", i, line, err)
		}
	}
	// The root namespace's end: an echo on the bridge's address.
	bridgeEcho := net.JoinHostPort(l.bridgeIP(), netLabEchoPort)
	stopEcho, err := startEcho(bridgeEcho)
	if err != nil {
		t.Fatalf("echo on the bridge's address: %v", err)
	}
	t.Cleanup(stopEcho)

	const reach, cut = "tcp=ok udp=ok", "tcp=cut udp=cut"
	type path struct {
		from int // a host, or -1 for the test process
		to   string
		want string
	}
	check := func(stage string, paths []path) {
		t.Helper()
		for _, p := range paths {
			var got string
			if p.from < 0 {
				got = fmt.Sprintf("tcp=%s udp=%s", result(probeTCP(p.to)), result(probeUDP(p.to)))
			} else {
				got = l.probe(t, p.from, p.to)
			}
			if got != p.want {
				t.Errorf("%s: from host %d to %s: %s, want %s", stage, p.from, p.to, got, p.want)
			}
		}
	}
	allReach := []path{
		{0, echo(1), reach}, {1, echo(0), reach}, {0, echo(2), reach}, {2, echo(1), reach},
		{0, bridgeEcho, reach}, {-1, echo(0), reach}, {-1, echo(2), reach},
	}
	check("before the partition", allReach)
	if t.Failed() {
		t.Fatal("the namespaces do not reach each other: is the root namespace's FORWARD policy DROP (Docker sets it) with net.bridge.bridge-nf-call-iptables=1?")
	}

	if err := l.partition([]int{0}, []int{1, 2}); err != nil {
		t.Fatal(err)
	}
	check("partitioned {0} | {1, 2}", []path{
		{0, echo(1), cut}, {1, echo(0), cut}, {0, echo(2), cut}, {2, echo(0), cut},
		{1, echo(2), reach}, {2, echo(1), reach},
		{0, bridgeEcho, reach}, {1, bridgeEcho, reach},
		{-1, echo(0), reach}, {-1, echo(1), reach},
	})

	if err := l.heal(); err != nil {
		t.Fatal(err)
	}
	check("healed", allReach)
}

// TestNetLabPartitionErrors checks that a partition naming a host that
// does not exist, or one host twice, is refused.
func TestNetLabPartitionErrors(t *testing.T) {
	l := newNetLab(t, 2)
	for _, tc := range []struct {
		name  string
		sides [][]int
	}{
		{"unknown host", [][]int{{0}, {2}}},
		{"negative host", [][]int{{-1}, {1}}},
		{"host twice", [][]int{{0}, {0, 1}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if err := l.partition(tc.sides...); err == nil {
				t.Errorf("partition(%v) = nil, want an error", tc.sides)
			}
		})
	}
	l.close()
	l.close() // twice is safe
	if err := l.partition([]int{0}, []int{1}); err == nil {
		t.Error("partition after close = nil, want an error")
	}
	for _, h := range l.hosts {
		if _, err := os.Stat("/run/netns/" + h.ns); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("namespace %s still exists after close (%v)", h.ns, err)
		}
	}
}
