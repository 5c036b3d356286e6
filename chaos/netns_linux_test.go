package chaos

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// A netLab is a small network of Linux network namespaces, one per
// host, built for a test and torn down after it: each namespace has its
// loopback up and one end of a veth pair, whose other end is enslaved to
// a bridge in the root namespace. The hosts sit on a private /24 (host i
// at .i+2), the bridge at .1, so every host reaches every other, the
// bridge's address (where a server of the root namespace, such as
// redis-server, listens for all of them) and the test process, which
// reaches every host in turn.
//
// A partition is iptables rules inside the hosts' namespaces that drop
// every packet, TCP and UDP alike, that arrives from a host of another
// side; senders see no error and established connections stall, as on
// a real cut, they are not reset. The bridge's address is never cut: a
// partition separates hosts from each other, not from what runs in the
// root namespace. heal flushes the rules.
//
// Names carry the test binary's pid, so two runs never share one, and
// newNetLab first removes what an earlier run whose process is gone
// left behind (one killed by -timeout, which runs no cleanups).
//
// Invariant: every namespace, veth and bridge a netLab created is gone
// once close has returned; close is safe to call twice, and the test's
// cleanup calls it.
type netLab struct {
	t      testing.TB
	prefix string // "tdn<pid>": the bridge, and the start of every veth's name
	bridge string
	subnet string // the first three octets, "10.77.3"
	hosts  []netHost

	// mu guards closed and serializes the changes of rules.
	mu     sync.Mutex
	closed bool
}

// netHost is one namespace of a netLab.
type netHost struct {
	ns   string // network namespace, under /run/netns
	veth string // the root namespace's end of its veth pair
	ip   string
}

const (
	// netnsPrefix starts the name of every namespace, veth and bridge a
	// netLab makes, followed by the pid of the test binary that made it.
	netnsPrefix = "tdn"
	// netnsCmdTimeout bounds one ip or iptables command.
	netnsCmdTimeout = 10 * time.Second
)

// netLabMissing says why this process cannot build a netLab, or "" when
// it can: it must run as root with ip (iproute2) and iptables-restore on
// PATH.
func netLabMissing() string {
	if os.Geteuid() != 0 {
		return "network namespaces need root (the partition scenario runs as root in CI)"
	}
	for _, c := range []struct{ bin, pkg string }{{"ip", "iproute2"}, {"iptables-restore", "iptables"}} {
		if _, err := exec.LookPath(c.bin); err != nil {
			return fmt.Sprintf("%s not found on PATH: install it (apt-get install %s)", c.bin, c.pkg)
		}
	}
	return ""
}

// requireNetLab skips the test when no netLab can be built here, or fails
// it under CI (CI=true), where the machine must have what it needs.
func requireNetLab(t testing.TB) {
	t.Helper()
	why := netLabMissing()
	if why == "" {
		return
	}
	if os.Getenv("CI") != "" {
		t.Fatal(why)
	}
	t.Skip(why)
}

// newNetLab builds a netLab of n hosts (at most 200), removed when the
// test ends. It skips the test, or fails it under CI, where namespaces
// cannot be made.
func newNetLab(t testing.TB, n int) *netLab {
	t.Helper()
	requireNetLab(t)
	if n < 1 || n > 200 {
		t.Fatalf("netLab: %d hosts, want 1 to 200", n)
	}
	sweepNetLabs(t)
	pid := os.Getpid()
	l := &netLab{t: t, prefix: netnsPrefix + strconv.Itoa(pid)}
	l.bridge = l.prefix
	subnet, err := freeSubnet(pid)
	if err != nil {
		t.Fatal(err)
	}
	l.subnet = subnet
	t.Cleanup(l.close)

	steps := [][]string{
		{"link", "add", l.bridge, "type", "bridge"},
		{"addr", "add", l.subnet + ".1/24", "dev", l.bridge},
		{"link", "set", l.bridge, "up"},
	}
	if err := ipCmds(steps); err != nil {
		t.Fatalf("netLab: bridge: %v", err)
	}
	for i := range n {
		h := netHost{
			ns:   fmt.Sprintf("%s-%d", l.prefix, i),
			veth: fmt.Sprintf("%sv%d", l.prefix, i),
			ip:   fmt.Sprintf("%s.%d", l.subnet, i+2),
		}
		l.hosts = append(l.hosts, h)
		steps := [][]string{
			{"netns", "add", h.ns},
			{"link", "add", h.veth, "type", "veth", "peer", "name", "eth0", "netns", h.ns},
			{"link", "set", h.veth, "master", l.bridge, "up"},
			{"-n", h.ns, "addr", "add", h.ip + "/24", "dev", "eth0"},
			{"-n", h.ns, "link", "set", "eth0", "up"},
			{"-n", h.ns, "link", "set", "lo", "up"},
		}
		if err := ipCmds(steps); err != nil {
			t.Fatalf("netLab: host %d: %v", i, err)
		}
	}
	return l
}

// freeSubnet picks a 10.77.x.0/24 that no interface of the root
// namespace has an address in, starting from one drawn from pid, so
// that concurrent runs pick different ones.
func freeSubnet(pid int) (string, error) {
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		return "", fmt.Errorf("netLab: list addresses: %w", err)
	}
	for k := range 250 {
		subnet := fmt.Sprintf("10.77.%d", 1+(pid+k)%250)
		taken := false
		for _, a := range addrs {
			if strings.HasPrefix(a.String(), subnet+".") {
				taken = true
				break
			}
		}
		if !taken {
			return subnet, nil
		}
	}
	return "", errors.New("netLab: every 10.77.x.0/24 is in use")
}

// sweepNetLabs removes the namespaces and bridges of netLabs whose test
// binary is no longer running. Removing a namespace removes its veth
// pair with it.
func sweepNetLabs(t testing.TB) {
	t.Helper()
	out, _ := runCmd(nil, "ip", "netns", "list")
	for _, line := range strings.Split(out, "\n") {
		f := strings.Fields(line)
		if len(f) == 0 {
			continue
		}
		if pid, ok := netLabPid(f[0], true); ok && !processAlive(pid) {
			if _, err := runCmd(nil, "ip", "netns", "del", f[0]); err == nil {
				t.Logf("netLab: removed namespace %s, left by process %d", f[0], pid)
			}
		}
	}
	out, _ = runCmd(nil, "ip", "-o", "link", "show", "type", "bridge")
	for _, line := range strings.Split(out, "\n") {
		f := strings.Fields(line) // "12: tdn1234: <...>"
		if len(f) < 2 {
			continue
		}
		name := strings.TrimSuffix(f[1], ":")
		if pid, ok := netLabPid(name, false); ok && !processAlive(pid) {
			if _, err := runCmd(nil, "ip", "link", "del", name); err == nil {
				t.Logf("netLab: removed bridge %s, left by process %d", name, pid)
			}
		}
	}
}

// netLabPid reads the pid out of a netLab's namespace name
// ("tdn<pid>-<i>", when ns) or bridge name ("tdn<pid>").
func netLabPid(name string, ns bool) (int, bool) {
	rest, ok := strings.CutPrefix(name, netnsPrefix)
	if !ok {
		return 0, false
	}
	if ns {
		var i string
		if rest, i, ok = strings.Cut(rest, "-"); !ok {
			return 0, false
		}
		if _, err := strconv.Atoi(i); err != nil {
			return 0, false
		}
	}
	pid, err := strconv.Atoi(rest)
	return pid, err == nil && pid > 0
}

// processAlive reports whether a process pid exists.
func processAlive(pid int) bool {
	err := syscall.Kill(pid, 0)
	return err == nil || errors.Is(err, syscall.EPERM)
}

// ip is host i's address.
func (l *netLab) ip(i int) string { return l.hosts[i].ip }

// bridgeIP is the root namespace's address on the lab's subnet, which
// every host reaches whatever the partition.
func (l *netLab) bridgeIP() string { return l.subnet + ".1" }

// wrap is the start of a command line that runs the rest inside host
// i's namespace: ip netns exec replaces itself with the command, so the
// process started is the command's own and a signal to its process group
// reaches it.
func (l *netLab) wrap(i int) []string {
	return []string{"ip", "netns", "exec", l.hosts[i].ns}
}

// partition cuts every host in one of sides off from every host in
// another: inside each host's namespace, packets from the other sides'
// hosts are dropped. Hosts in no side keep reaching everyone, as
// does the bridge's address. It replaces any partition in place.
func (l *netLab) partition(sides ...[]int) error {
	side := make(map[int]int) // host -> its side
	for s, hosts := range sides {
		for _, h := range hosts {
			if h < 0 || h >= len(l.hosts) {
				return fmt.Errorf("netLab: partition names host %d of %d", h, len(l.hosts))
			}
			if _, dup := side[h]; dup {
				return fmt.Errorf("netLab: partition names host %d twice", h)
			}
			side[h] = s
		}
	}
	drops := make(map[int][]string) // host -> the addresses it no longer reaches
	for h, s := range side {
		for o, so := range side {
			if so != s {
				drops[h] = append(drops[h], l.hosts[o].ip)
			}
		}
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return errors.New("netLab: closed")
	}
	return l.setAllRulesLocked(drops)
}

// heal removes every partition rule: all hosts reach each other again.
func (l *netLab) heal() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return errors.New("netLab: closed")
	}
	drops := make(map[int][]string, len(l.hosts))
	for h := range l.hosts {
		drops[h] = nil
	}
	return l.setAllRulesLocked(drops)
}

// setAllRulesLocked sets the rules of every host in drops at once, one
// goroutine per host, so that a cut or a heal reaches every namespace
// within about one iptables-restore's time rather than one after the
// other. l.mu is held.
func (l *netLab) setAllRulesLocked(drops map[int][]string) error {
	errs := make([]error, len(l.hosts))
	var wg sync.WaitGroup
	for h, ips := range drops {
		wg.Go(func() { errs[h] = l.setRulesLocked(h, ips) })
	}
	wg.Wait()
	return errors.Join(errs...)
}

// setRulesLocked replaces, in one iptables-restore, the filter table of
// host h's namespace with rules that drop every packet arriving from
// each of ips (none: no rule at all). Packets are dropped on arrival
// only: a rule on the way out would fail the sender's sendto and
// connect at once (EPERM), which no real cut does. Every host of a cut
// drops what comes from the other side, so both directions are cut.
// l.mu is held.
func (l *netLab) setRulesLocked(h int, ips []string) error {
	var b strings.Builder
	b.WriteString("*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n")
	for _, ip := range ips {
		fmt.Fprintf(&b, "-A INPUT -s %s/32 -j DROP\n", ip)
	}
	b.WriteString("COMMIT\n")
	if _, err := runCmd([]byte(b.String()), "ip", "netns", "exec", l.hosts[h].ns, "iptables-restore"); err != nil {
		return fmt.Errorf("netLab: rules of host %d: %w", h, err)
	}
	return nil
}

// close removes the namespaces (and with them their veth pairs and
// rules) and the bridge. Errors are logged, not returned: it runs in
// cleanups.
func (l *netLab) close() {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return
	}
	l.closed = true
	for _, h := range l.hosts {
		if _, err := runCmd(nil, "ip", "netns", "del", h.ns); err != nil {
			l.t.Logf("netLab: %v", err)
		}
	}
	if _, err := runCmd(nil, "ip", "link", "del", l.bridge); err != nil {
		l.t.Logf("netLab: %v", err)
	}
}

// ipCmds runs ip with each of steps' arguments in turn and stops at the
// first failure.
func ipCmds(steps [][]string) error {
	for _, s := range steps {
		if _, err := runCmd(nil, "ip", s...); err != nil {
			return err
		}
	}
	return nil
}

// runCmd runs name with args (and stdin, when not nil) and returns its
// output; a failure's error quotes the command and its output.
func runCmd(stdin []byte, name string, args ...string) (string, error) {
	cmd := exec.Command(name, args...)
	if stdin != nil {
		cmd.Stdin = bytes.NewReader(stdin)
	}
	var out bytes.Buffer
	cmd.Stdout = &out
	cmd.Stderr = &out
	if err := cmd.Start(); err != nil {
		return "", fmt.Errorf("%s %s: %w", name, strings.Join(args, " "), err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			return out.String(), fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, strings.TrimSpace(out.String()))
		}
		return out.String(), nil
	case <-time.After(netnsCmdTimeout):
		_ = cmd.Process.Kill()
		<-done
		return out.String(), fmt.Errorf("%s %s: no answer within %v", name, strings.Join(args, " "), netnsCmdTimeout)
	}
}
