#!/usr/bin/env bash
# The cluster pass of the bench suite (make bench-cluster). On this
# machine it starts redis-server (AOF, fsync every second) and, in one
# run, measures schedule and fire against ONE timerd node on that Redis,
# then against a cluster of three nodes on the same Redis (its state
# flushed in between; 1,024 shards both times), and prints each figure of
# the three nodes as a ratio to the one node's. Then, on the three:
# failover, with a kill -9 of one node's process while its timers fall
# due, and recovery: timers loaded, every node restarted, the time until
# every shard serves again and a probe timer fires. Last, with
# REDIS_CLUSTER=1, schedule and fire once more against three nodes on a
# Redis Cluster of three masters (started here, AOF fsync every second
# too, reached by its list of seeds), each figure again a ratio to the one
# node's on one Redis.
#
# Everything runs on this machine: Redis, the nodes and the bench share
# its cores, so a ratio says how the cluster's coordination costs or pays
# on one machine, not how three machines would scale.
#
# Settings (environment):
#   BIN             directory of timerd and timerctl (bin)
#   OUT             where the reports go (bench-results/cluster-<UTC date
#                   and time>), one directory per run: LABEL-SCENARIO
#   DURATION        load phase of schedule (per batch size) and fire (10s)
#   FIRE_RATE       fire's offered rate (10000)
#   BATCHES         schedule's batch sizes (100,1000)
#   SHARDS          shard count of both set-ups (1024)
#   FAILOVER_COUNT  failover's timers (100000; 0 skips failover), due over
#                   SPREAD (30s); the kill comes KILL_AFTER (10s) after
#                   the first is due
#   RECOVERY_COUNT  recovery's timers (1000000; 0 skips recovery)
#   RESTART_SIGNAL  how recovery stops the nodes before it starts them
#                   again: KILL (a crash, the default: the restarted nodes
#                   wait for the old leases to lapse) or TERM (a graceful
#                   stop: each node hands over what it can and leaves)
#   REDIS_CLUSTER   1 (the default) also measures three nodes on a Redis
#                   Cluster of three masters; 0 leaves it out
#   LIMIT           bound of each bench run (15m); a run past it is
#                   interrupted and reports what it measured
set -euo pipefail

BIN=${BIN:-bin}
OUT=${OUT:-bench-results/cluster-$(date -u +%Y%m%d-%H%M%S)}
DURATION=${DURATION:-10s}
FIRE_RATE=${FIRE_RATE:-10000}
BATCHES=${BATCHES:-100,1000}
SHARDS=${SHARDS:-1024}
FAILOVER_COUNT=${FAILOVER_COUNT:-100000}
SPREAD=${SPREAD:-30s}
KILL_AFTER=${KILL_AFTER:-10s}
RECOVERY_COUNT=${RECOVERY_COUNT:-1000000}
RESTART_SIGNAL=${RESTART_SIGNAL:-KILL}
REDIS_CLUSTER=${REDIS_CLUSTER:-1}
LIMIT=${LIMIT:-15m}

prog="cluster suite"
# shellcheck source=tools/nodes.sh
. "$(dirname "$0")/../../tools/nodes.sh"
require_tools
case $RESTART_SIGNAL in TERM | KILL) ;; *) echo "cluster suite: RESTART_SIGNAL must be TERM or KILL, got '$RESTART_SIGNAL'" >&2; exit 1 ;; esac
mkdir -p "$OUT"
work=$(mktemp -d)

# The logs of Redis and the nodes are kept in $OUT/logs.
cleanup() {
	kill_all
	mkdir -p "$OUT/logs" && cp "$work"/*.log "$OUT/logs/" 2>/dev/null || true
	rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# bench LABEL SCENARIO [FLAGS...]: one run, its report in
# $OUT/LABEL-SCENARIO. A failed check is reported, not fatal: the table
# shows it.
bench() {
	local label=$1 scenario=$2; shift 2
	echo
	echo "== $scenario on $label"
	timeout --foreground -s INT -k 30s "$LIMIT" "$BIN/timerctl" --timeout 30s bench "$scenario" --out "$OUT/$label-$scenario" "$@" || echo "(exit $?)"
}

echo "== cluster suite, $(date -u '+%Y-%m-%d %H:%M UTC'): $(nproc) CPUs ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')), $(awk '/^MemTotal/ {printf "%.0f", $2 / 1048576}' /proc/meminfo) GiB," \
	"load average $(cut -d' ' -f1-3 /proc/loadavg), Redis $(redis-server --version | cut -d' ' -f3 | cut -d= -f2)"
echo "== reports in $OUT"

start_redis

# One node on the Redis.
grpc=$(free_port) http=$(free_port)
start_node one --redis "$REDIS" --shards "$SHARDS" --node-name one --grpc-addr "127.0.0.1:$grpc" --http-addr "127.0.0.1:$http"
wait_ready "$http"
ONE=127.0.0.1:$grpc
bench timerd-1-node schedule --addr "$ONE" --duration "$DURATION" --batch "$BATCHES"
wait_ready "$http"
bench timerd-1-node fire --addr "$ONE" --duration "$DURATION" --rate "$FIRE_RATE"
stop_node one
redis-cli -p "$REDIS_PORT" flushall >/dev/null

# Three nodes on the same Redis, afresh.
names=(n0 n1 n2)
declare -A grpcs https
join=""
for n in "${names[@]}"; do
	grpcs[$n]=$(free_port) https[$n]=$(free_port) gossip=$(free_port)
	eval "gossip_$n=$gossip"
	join+="${join:+,}127.0.0.1:$gossip"
done
addrs=""
for n in "${names[@]}"; do
	g=gossip_$n
	start_node "$n" --redis "$REDIS" --shards "$SHARDS" --node-name "$n" --grpc-addr "127.0.0.1:${grpcs[$n]}" \
		--http-addr "127.0.0.1:${https[$n]}" --gossip-addr "127.0.0.1:${!g}" --join "$join"
	addrs+="${addrs:+,}127.0.0.1:${grpcs[$n]}"
done
wait_ready "${https[@]}"
bench timerd-3-nodes schedule --addr "$addrs" --duration "$DURATION" --batch "$BATCHES"
wait_ready "${https[@]}"
bench timerd-3-nodes fire --addr "$addrs" --duration "$DURATION" --rate "$FIRE_RATE"
wait_ready "${https[@]}"

if [ "$FAILOVER_COUNT" != 0 ]; then
	# Failover: n2 dies with kill -9 while its timers fall due; it comes
	# back afterwards.
	bench timerd-3-nodes failover --addr "$addrs" --count "$FAILOVER_COUNT" --spread "$SPREAD" --kill-after "$KILL_AFTER" \
		--kill-cmd "kill -9 $(cat "$work/n2.pid")"
	rm -f "$work/n2.pid"
	start n2
	wait_ready "${https[@]}"
fi

if [ "$RECOVERY_COUNT" != 0 ]; then
	# Recovery stops all three and starts them again.
	restart_script "$RESTART_SIGNAL"
	bench timerd-3-nodes recovery --addr "$addrs" --count "$RECOVERY_COUNT" --restart-cmd "bash $work/restart.sh ${names[*]}"
fi

labels=(timerd-1-node timerd-3-nodes)
if [ "$REDIS_CLUSTER" = 1 ]; then
	# Three nodes on a Redis Cluster of three masters, afresh: the nodes
	# on the one Redis stop first, so that the machine runs one set-up at
	# a time.
	for n in "${names[@]}"; do stop_node "$n"; done
	stop_process redis TERM
	seeds="" cports=()
	for i in 0 1 2; do
		p=$(free_port) bus=$(free_port)
		cports+=("$p")
		mkdir -p "$work/redis-c$i"
		command_line "redis-c$i" redis-server --port "$p" --cluster-port "$bus" --bind 127.0.0.1 --dir "$work/redis-c$i" --save '' \
			--appendonly yes --appendfsync everysec --cluster-enabled yes --cluster-config-file nodes.conf
		start "redis-c$i"
		seeds+="${seeds:+,}127.0.0.1:$p"
	done
	for p in "${cports[@]}"; do
		for _ in $(seq 100); do redis-cli -p "$p" ping >/dev/null 2>&1 && break; sleep 0.1; done
	done
	redis-cli --cluster create ${seeds//,/ } --cluster-replicas 0 --cluster-yes >"$work/redis-cluster-create.log" 2>&1 ||
		{ echo "$prog: redis-cli --cluster create failed:" >&2; cat "$work/redis-cluster-create.log" >&2; exit 1; }
	for p in "${cports[@]}"; do
		for _ in $(seq 300); do redis-cli -p "$p" cluster info 2>/dev/null | grep -q cluster_state:ok && break; sleep 0.1; done
	done
	cnames=(c0 c1 c2)
	join="" caddrs=() chttps=()
	for n in "${cnames[@]}"; do
		eval "gossip_$n=$(free_port)"
		g=gossip_$n
		join+="${join:+,}127.0.0.1:${!g}"
	done
	for n in "${cnames[@]}"; do
		g=gossip_$n grpc=$(free_port) http=$(free_port)
		start_node "$n" --redis "redis://$seeds" --shards "$SHARDS" --node-name "$n" --grpc-addr "127.0.0.1:$grpc" \
			--http-addr "127.0.0.1:$http" --gossip-addr "127.0.0.1:${!g}" --join "$join"
		caddrs+=("127.0.0.1:$grpc") chttps+=("$http")
	done
	caddr=$(IFS=,; echo "${caddrs[*]}")
	wait_ready "${chttps[@]}"
	bench timerd-3-nodes-redis-cluster schedule --addr "$caddr" --duration "$DURATION" --batch "$BATCHES"
	wait_ready "${chttps[@]}"
	bench timerd-3-nodes-redis-cluster fire --addr "$caddr" --duration "$DURATION" --rate "$FIRE_RATE"
	labels+=(timerd-3-nodes-redis-cluster)
fi

echo
also=""
[ "$REDIS_CLUSTER" = 1 ] && also=", and three on a Redis Cluster of three masters"
echo "== three nodes against one on one Redis$also, on the same machine: each figure, and its ratio to one node's"
for scenario in schedule fire; do
	files=()
	for label in "${labels[@]}"; do
		f="$OUT/$label-$scenario/report.json"
		[ -f "$f" ] && files+=("$f")
	done
	[ ${#files[@]} -gt 0 ] && "$BIN/timerctl" bench compare "${files[@]}"
done

echo
echo "== done; reports in $OUT"
