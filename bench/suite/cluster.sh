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

command -v redis-server >/dev/null || { echo "cluster suite: redis-server is missing (apt-get install -y redis-server)" >&2; exit 1; }
for b in timerd timerctl; do
	[ -x "$BIN/$b" ] || { echo "cluster suite: $BIN/$b is missing (make build)" >&2; exit 1; }
done
case $RESTART_SIGNAL in TERM | KILL) ;; *) echo "cluster suite: RESTART_SIGNAL must be TERM or KILL, got '$RESTART_SIGNAL'" >&2; exit 1 ;; esac
mkdir -p "$OUT"
work=$(mktemp -d)

# Every process the suite starts has its pid in a file of $work: a node
# restarted by recovery's restart command is not a child of this shell.
# The logs of Redis and the nodes are kept in $OUT/logs.
cleanup() {
	local f
	for f in "$work"/*.pid; do
		[ -e "$f" ] && kill -9 "$(cat "$f")" 2>/dev/null || true
	done
	wait 2>/dev/null || true
	mkdir -p "$OUT/logs" && cp "$work"/*.log "$OUT/logs/" 2>/dev/null || true
	rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# free_port prints a loopback port nothing listens on and that it has not
# printed before, below the kernel's range of ephemeral ports, from which
# the machine's outgoing connections would take it. It keeps what it
# printed in $work/ports, since it runs in a subshell.
free_port() {
	local p lo
	lo=$(cut -f1 /proc/sys/net/ipv4/ip_local_port_range 2>/dev/null || echo 32768)
	while :; do
		p=$((10000 + RANDOM % (lo - 10000)))
		grep -qx "$p" "$work/ports" 2>/dev/null && continue
		(echo >"/dev/tcp/127.0.0.1/$p") 2>/dev/null && continue
		echo "$p" >>"$work/ports"
		echo "$p"
		return
	done
}

# ready PORT reports whether the node's /readyz at PORT answers 200.
ready() {
	(
		exec 3<>"/dev/tcp/127.0.0.1/$1" || exit 1
		printf 'GET /readyz HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n' >&3
		read -r line <&3 || true
		[[ $line == *" 200 "* ]]
	) 2>/dev/null
}

# alive PID reports whether the process runs (a zombie does not). It
# forks nothing: on a starved machine every fork costs tens of ms.
alive() {
	local stat
	read -r stat 2>/dev/null <"/proc/$1/stat" || return 1
	[[ ${stat##*) } != Z* ]]
}

# Each node's command line is kept in $work/NAME.cmd, so that the restart
# script starts it again exactly so.
launch='eval "exec $(cat "$work/$n.cmd")" >>"$work/$n.log" 2>&1 & echo $! >"$work/$n.pid"; disown $!'

# start NAME... starts the nodes from their command lines. One that exits
# at once (after a kill, its port may not be free again yet) is started
# again, for half a second at most.
start() {
	local n pid
	for n in "$@"; do eval "$launch"; done
	for _ in 1 2 3 4 5; do
		sleep 0.1
		for n in "$@"; do
			read -r pid <"$work/$n.pid"
			alive "$pid" && continue
			echo "cluster suite: $n exited at once; starting it again" >&2
			eval "$launch"
		done
	done
}

# start_node NAME [FLAGS...] starts a node in the background.
start_node() {
	local n=$1; shift
	printf '%q ' "$BIN/timerd" --log-level warn "$@" >"$work/$n.cmd"
	start "$n"
}

# stop_node NAME stops a node gracefully and waits until it has exited.
stop_node() {
	local pid
	pid=$(cat "$work/$1.pid")
	kill -TERM "$pid" 2>/dev/null || true
	for _ in $(seq 600); do alive "$pid" || break; sleep 0.05; done
	rm -f "$work/$1.pid"
}

# wait_ready HTTP_PORT... waits, at most a minute, until every node at
# the ports says it serves every shard it should hold, twice a second
# apart (the shards settle once the members agree).
wait_ready() {
	local p ok streak=0
	for _ in $(seq 600); do
		ok=1
		for p in "$@"; do ready "$p" || ok=0; done
		if [ $ok = 1 ]; then
			streak=$((streak + 1))
			[ $streak -ge 2 ] && return
			sleep 1
			continue
		fi
		streak=0
		sleep 0.1
	done
	echo "cluster suite: the nodes did not become ready:" >&2
	tail -n 20 "$work"/*.log >&2
	exit 1
}

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

rport=$(free_port)
mkdir -p "$work/redis"
redis-server --port "$rport" --bind 127.0.0.1 --dir "$work/redis" --save '' \
	--appendonly yes --appendfsync everysec >"$work/redis.log" 2>&1 &
echo $! >"$work/redis.pid"
REDIS=redis://127.0.0.1:$rport/0
for _ in $(seq 100); do redis-cli -p "$rport" ping >/dev/null 2>&1 && break; sleep 0.1; done

# One node on the Redis.
grpc=$(free_port) http=$(free_port)
start_node one --redis "$REDIS" --shards "$SHARDS" --node-name one --grpc-addr "127.0.0.1:$grpc" --http-addr "127.0.0.1:$http"
wait_ready "$http"
ONE=127.0.0.1:$grpc
bench timerd-1-node schedule --addr "$ONE" --duration "$DURATION" --batch "$BATCHES"
wait_ready "$http"
bench timerd-1-node fire --addr "$ONE" --duration "$DURATION" --rate "$FIRE_RATE"
stop_node one
redis-cli -p "$rport" flushall >/dev/null

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
	start n2
	wait_ready "${https[@]}"
fi

if [ "$RECOVERY_COUNT" != 0 ]; then
	# Recovery stops all three and starts them again.
	cat >"$work/restart.sh" <<-EOF
		# Stops the nodes named as arguments (SIG$RESTART_SIGNAL), waits until they
		# have exited, and starts them again as they were started.
		work=$(printf '%q' "$work")
		launch=$(printf '%q' "$launch")
		$(declare -f alive start)
		for n in "\$@"; do read -r pid <"\$work/\$n.pid"; kill -$RESTART_SIGNAL "\$pid" 2>/dev/null || true; done
		for n in "\$@"; do
			read -r pid <"\$work/\$n.pid"
			for _ in \$(seq 1200); do alive "\$pid" || break; sleep 0.05; done
		done
		start "\$@"
	EOF
	bench timerd-3-nodes recovery --addr "$addrs" --count "$RECOVERY_COUNT" --restart-cmd "bash $work/restart.sh ${names[*]}"
fi

labels=(timerd-1-node timerd-3-nodes)
if [ "$REDIS_CLUSTER" = 1 ]; then
	# Three nodes on a Redis Cluster of three masters, afresh: the nodes
	# on the one Redis stop first, so that the machine runs one set-up at
	# a time.
	for n in "${names[@]}"; do stop_node "$n"; done
	kill "$(cat "$work/redis.pid")" 2>/dev/null || true
	seeds="" cports=()
	for i in 0 1 2; do
		p=$(free_port) bus=$(free_port)
		cports+=("$p")
		mkdir -p "$work/redis-c$i"
		redis-server --port "$p" --cluster-port "$bus" --bind 127.0.0.1 --dir "$work/redis-c$i" --save '' \
			--appendonly yes --appendfsync everysec --cluster-enabled yes --cluster-config-file nodes.conf \
			>"$work/redis-c$i.log" 2>&1 &
		echo $! >"$work/redis-c$i.pid"
		disown $! # the cleanup's kill -9 is expected; the shell need not report it
		seeds+="${seeds:+,}127.0.0.1:$p"
	done
	for p in "${cports[@]}"; do
		for _ in $(seq 100); do redis-cli -p "$p" ping >/dev/null 2>&1 && break; sleep 0.1; done
	done
	redis-cli --cluster create ${seeds//,/ } --cluster-replicas 0 --cluster-yes >"$work/redis-cluster-create.log" 2>&1 ||
		{ echo "cluster suite: redis-cli --cluster create failed:" >&2; cat "$work/redis-cluster-create.log" >&2; exit 1; }
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
