package cluster

import (
	"fmt"
	"log/slog"
	"net"
	"strconv"
	"strings"
	"time"

	"github.com/hashicorp/memberlist"
)

// Config configures a Cluster. Start from DefaultConfig (production) or
// LocalConfig (tests on one host) and set NodeName, Incarnation,
// GRPCAddr, Shards and Seeds.
type Config struct {
	// NodeName names the node in the cluster; it is stable across
	// restarts of the node. Required: 1 to 128 bytes, no zero byte.
	NodeName string
	// Incarnation tells this process apart from earlier and later
	// processes of the same node; fresh at every start. Required: 1 to
	// 128 bytes.
	Incarnation string
	// GRPCAddr is the host:port other nodes and clients reach this node's
	// gRPC services at. It is announced in the gossip. Required.
	GRPCAddr string

	// BindAddr is the IP:port the gossip listens on (UDP and TCP). Port 0
	// picks a free port. Default "127.0.0.1:7946" (like the server's
	// listeners, reachable from this host only until set), "127.0.0.1:0"
	// in LocalConfig.
	BindAddr string
	// AdvertiseAddr is the IP:port peers reach this node's gossip at,
	// when that is not the bound address (NAT, a bind to 0.0.0.0 on a
	// host with many addresses). "" advertises the bound address (a bind
	// to 0.0.0.0 advertises the host's first private address). Port 0
	// advertises the bound port; with a BindAddr port of 0 it must be 0.
	AdvertiseAddr string
	// Seeds are host:port gossip addresses of members to join. Empty
	// means this node starts a new cluster. A seed that is this node's
	// own address is skipped, so every node may be given the same list.
	Seeds []string
	// RejoinInterval is how often the seeds are joined again while the
	// cluster runs (default 10s; 500ms in LocalConfig). A node whose seeds
	// were unreachable at Start joins once they come up; and two halves of
	// a partition that lasted longer than the gossip's window for dead
	// nodes (Memberlist.GossipToTheDeadTime) have forgotten each other and
	// would otherwise never merge again.
	RejoinInterval time.Duration

	// Shards is the deployment's shard count, which the ring places on
	// the active members. Required.
	Shards uint32

	// SecretKey, when set, encrypts and authenticates every gossip message
	// (memberlist's AES-GCM keyring): 16, 24 or 32 bytes, for AES-128,
	// -192 or -256. A node without the key, or with another, cannot join
	// or read the gossip. Default: none, plaintext gossip. See
	// DecodeKey for the key file's format.
	SecretKey []byte
	// Label is stamped on every gossip packet and stream, and a node
	// drops what carries another label, so two clusters (or timerd and
	// another memberlist user) on one network never merge by mistake. It
	// is not a secret (SecretKey is). Default "timerd"; at most 255
	// bytes. Nodes of one cluster must share it.
	Label string

	// Memberlist holds the gossip's timing and tuning. Start copies it and
	// sets the name, the addresses, the delegates and the logger itself,
	// so those fields are ignored. DefaultConfig declares a killed node
	// dead within about 2 to 3s on a LAN; LocalConfig within about 1s on
	// loopback. Required.
	Memberlist *memberlist.Config

	// Logger receives membership changes and memberlist's own log (its
	// [DEBUG] and [INFO] lines at debug level, [WARN] and [ERR] at warn).
	// Default (and nil): discard.
	Logger *slog.Logger
}

// DefaultConfig returns the production defaults documented on Config.
//
// The gossip is memberlist's LAN preset, made faster to declare a killed
// node dead: a failover must fire every due timer of a dead node within
// its lease's TTL plus 2s, so the ring must move the dead node's shards
// before its leases lapse. Every member probes one other every 500ms; a
// probe unanswered for 250ms, and then through other members, makes the
// node suspect; a suspect that does not refute within SuspicionMult (3)
// probe intervals, 1.5s, is declared dead (the interval grows with
// log10 of the member count beyond 10 members, 1.5x at 32). A suspicion
// that no second member confirms lasts up to SuspicionMaxTimeoutMult (2)
// times as long, which bounds detection when probes are lost. On a LAN
// this puts a killed node's death 2 to 4s after it stopped answering
// (BenchmarkDeathDetection measures it). A dead node's name can be taken
// by a process at another address once it has been dead for
// DeadNodeReclaimTime (5s), so a node restarted elsewhere under its name
// is not shut out until memberlist forgets the dead one.
func DefaultConfig() Config {
	ml := memberlist.DefaultLANConfig()
	ml.ProbeInterval = 500 * time.Millisecond
	ml.ProbeTimeout = 250 * time.Millisecond
	ml.SuspicionMult = 3
	ml.SuspicionMaxTimeoutMult = 2
	ml.GossipInterval = 100 * time.Millisecond
	ml.DeadNodeReclaimTime = 5 * time.Second
	return Config{
		BindAddr:       "127.0.0.1:7946",
		Label:          DefaultLabel,
		RejoinInterval: 10 * time.Second,
		Memberlist:     ml,
	}
}

// LocalConfig returns defaults for tests and development on one host: the
// gossip binds 127.0.0.1 on a free port and runs on memberlist's loopback
// preset, faster still (probes every 200ms, 100ms to answer, suspicion
// 600ms to 1.2s), so a killed node is declared dead in about a second; a
// dead node's name is free again after 1s, and the seeds are joined again
// every 500ms.
func LocalConfig() Config {
	ml := memberlist.DefaultLocalConfig()
	ml.ProbeInterval = 200 * time.Millisecond
	ml.ProbeTimeout = 100 * time.Millisecond
	ml.SuspicionMult = 3
	ml.SuspicionMaxTimeoutMult = 2
	ml.GossipInterval = 50 * time.Millisecond
	ml.DeadNodeReclaimTime = time.Second
	return Config{
		BindAddr:       "127.0.0.1:0",
		Label:          DefaultLabel,
		RejoinInterval: 500 * time.Millisecond,
		Memberlist:     ml,
	}
}

// maxNameLen bounds NodeName and Incarnation, which every gossip message
// about the node carries.
const maxNameLen = 128

// Validate reports the first invalid field. Errors wrap ErrInvalidConfig.
func (c Config) Validate() error {
	bad := func(field, format string, args ...any) error {
		return fmt.Errorf("%w: %s %s", ErrInvalidConfig, field, fmt.Sprintf(format, args...))
	}
	bindPort := -1
	switch {
	case c.NodeName == "" || len(c.NodeName) > maxNameLen || strings.IndexByte(c.NodeName, 0) >= 0:
		return bad("NodeName", "must be 1 to %d bytes without a zero byte, got %q", maxNameLen, c.NodeName)
	case c.Incarnation == "" || len(c.Incarnation) > maxNameLen:
		return bad("Incarnation", "must be 1 to %d bytes, got %q", maxNameLen, c.Incarnation)
	case !isHostPort(c.GRPCAddr):
		return bad("GRPCAddr", "must be host:port, got %q", c.GRPCAddr)
	case len(meta{GRPCAddr: c.GRPCAddr, Incarnation: c.Incarnation}.encode()) > memberlist.MetaMaxSize:
		return bad("GRPCAddr", "and Incarnation must fit the gossip's %d bytes of node meta", memberlist.MetaMaxSize)
	}
	if _, port, err := splitIPPort(c.BindAddr); err != nil {
		return bad("BindAddr", "must be IP:port, got %q: %v", c.BindAddr, err)
	} else {
		bindPort = port
	}
	if c.AdvertiseAddr != "" {
		_, port, err := splitIPPort(c.AdvertiseAddr)
		if err != nil {
			return bad("AdvertiseAddr", "must be empty or IP:port, got %q: %v", c.AdvertiseAddr, err)
		}
		if bindPort == 0 && port != 0 {
			return bad("AdvertiseAddr", "must have port 0 (the bound port) when BindAddr's port is 0, got %q", c.AdvertiseAddr)
		}
	}
	for i, s := range c.Seeds {
		if !isHostPort(s) {
			return bad("Seeds", "[%d] must be host:port, got %q", i, s)
		}
	}
	switch {
	case c.RejoinInterval <= 0:
		return bad("RejoinInterval", "must be > 0, got %v", c.RejoinInterval)
	case c.Shards < 1:
		return bad("Shards", "must be >= 1, got %d", c.Shards)
	case c.Memberlist == nil:
		return bad("Memberlist", "must be set (start from DefaultConfig or LocalConfig)")
	case len(c.Label) > maxLabelLen:
		return bad("Label", "must be at most %d bytes, got %d", maxLabelLen, len(c.Label))
	}
	if err := validKeyLen(len(c.SecretKey)); c.SecretKey != nil && err != nil {
		return bad("SecretKey", "%v", err)
	}
	return nil
}

// isHostPort reports whether s is host:port with a non-empty host and a
// port in [1, 65535].
func isHostPort(s string) bool {
	host, port, err := net.SplitHostPort(s)
	if err != nil || host == "" {
		return false
	}
	p, err := strconv.ParseUint(port, 10, 16)
	return err == nil && p > 0
}

// splitIPPort splits an IP:port, where the port may be 0.
func splitIPPort(s string) (net.IP, int, error) {
	host, port, err := net.SplitHostPort(s)
	if err != nil {
		return nil, 0, err
	}
	ip := net.ParseIP(host)
	if ip == nil {
		return nil, 0, fmt.Errorf("%q is not an IP address", host)
	}
	p, err := strconv.ParseUint(port, 10, 16)
	if err != nil {
		return nil, 0, fmt.Errorf("bad port %q", port)
	}
	return ip, int(p), nil
}
