#!/usr/bin/env bash
# make cluster: a local timerd cluster in one command. It starts a
# redis-server (append-only file on, fsync every second) and three timerd
# nodes, n1, n2 and n3, on 127.0.0.1, each a member of one memberlist
# cluster on that Redis, waits until every node serves its shards, prints
# the addresses, the pids and commands to try, and runs until Ctrl-C or
# SIGTERM. Then it stops the nodes (SIGTERM: each hands its shards over),
# then Redis, and removes its directory (Redis's data, the nodes' logs)
# unless KEEP=1.
#
# Ports (BASE=7100, the default; `make run` takes 7070 and 7071):
#   Redis  BASE        (7100)
#   nI     BASE+10*I+1 gRPC, +2 HTTP (/metrics, /readyz), +3 gossip:
#          n1 7111/7112/7113, n2 7121/7122/7123, n3 7131/7132/7133
# BASE=free takes free ports instead (tests do), and prints them.
#
# Settings (environment):
#   BIN        directory of timerd and timerctl (bin)
#   BASE       first port, or "free" (7100)
#   SHARDS     shard count (1024)
#   LEASE_TTL  the nodes' --lease-ttl (empty: timerd's default)
#   LOG_LEVEL  the nodes' --log-level (info)
#   KEEP       1 keeps the directory of data and logs at the end (0)
set -euo pipefail

BIN=${BIN:-bin}
BASE=${BASE:-7100}
SHARDS=${SHARDS:-1024}
LEASE_TTL=${LEASE_TTL:-}
NODE_LOG_LEVEL=${LOG_LEVEL:-info}
KEEP=${KEEP:-0}
DETACH=1

prog="make cluster"
# shellcheck source=tools/nodes.sh
. "$(dirname "$0")/nodes.sh"
require_tools
[[ $BASE == free || $BASE =~ ^[1-9][0-9]*$ && $BASE -le 65500 ]] ||
	{ echo "$prog: BASE must be a port below 65500 or 'free', got '$BASE'" >&2; exit 1; }

work=$(mktemp -d)
names=(n1 n2 n3)

# cleanup stops the nodes gracefully, all at once, then Redis; anything
# still running after a minute is killed.
cleanup() {
	local n stops=()
	trap '' INT TERM # a second Ctrl-C does not cut the stop short
	echo
	echo "$prog: stopping the nodes, then Redis"
	for n in "${names[@]}"; do
		stop_node "$n" &
		stops+=($!)
	done
	wait "${stops[@]}"
	stop_process redis TERM
	kill_all
	if [ "$KEEP" = 1 ]; then
		echo "$prog: stopped; data and logs kept in $work"
	else
		rm -rf "$work"
		echo "$prog: stopped; removed $work"
	fi
}
trap cleanup EXIT
trap 'exit 0' INT TERM

# port OFFSET prints BASE+OFFSET, or a free port when BASE=free; a fixed
# port that is taken fails the start.
port() {
	if [ "$BASE" = free ]; then
		free_port
		return
	fi
	local p=$((BASE + $1))
	if listening "$p"; then
		echo "$prog: port $p is in use (another make cluster?); set BASE to another port, or BASE=free" >&2
		return 1
	fi
	echo "$p"
}

declare -A grpc http gossip
join=""
i=0
for n in "${names[@]}"; do
	i=$((i + 1))
	grpc[$n]=$(port $((10 * i + 1)))
	http[$n]=$(port $((10 * i + 2)))
	gossip[$n]=$(port $((10 * i + 3)))
	join+="${join:+,}127.0.0.1:${gossip[$n]}"
done
start_redis "$(port 0)"

extra=()
[ -n "$LEASE_TTL" ] && extra+=(--lease-ttl "$LEASE_TTL")
for n in "${names[@]}"; do
	start_node "$n" --redis "$REDIS" --shards "$SHARDS" --node-name "$n" "${extra[@]}" \
		--grpc-addr "127.0.0.1:${grpc[$n]}" --http-addr "127.0.0.1:${http[$n]}" \
		--gossip-addr "127.0.0.1:${gossip[$n]}" --join "$join"
done
restart_script TERM
wait_ready "${http[@]}"

ctl="$BIN/timerctl --addr 127.0.0.1:${grpc[n1]}"
echo "$prog: three timerd nodes on $REDIS (appendonly yes, appendfsync everysec), $SHARDS shards"
echo "$prog: data and logs in $work"
echo
row='%-6s %-16s %-16s %-16s %-8s %s\n'
# shellcheck disable=SC2059
printf "$row" NODE GRPC HTTP GOSSIP PID LOG
for n in "${names[@]}"; do
	# shellcheck disable=SC2059
	printf "$row" "$n" "127.0.0.1:${grpc[$n]}" "127.0.0.1:${http[$n]}" "127.0.0.1:${gossip[$n]}" \
		"$(cat "$work/$n.pid")" "$work/$n.log"
done
# shellcheck disable=SC2059
printf "$row" redis "127.0.0.1:$REDIS_PORT" - - "$(cat "$work/redis.pid")" "$work/redis.log"
cat <<EOF

Try, in another terminal:
  $ctl status
  $ctl schedule hello --topic demo --in 10s --payload hi
  $ctl subscribe --topic demo --count 1
  $BIN/timerctl --addr 127.0.0.1:${grpc[n2]},127.0.0.1:${grpc[n3]} bench schedule --duration 5s
  kill -9 $(cat "$work/n3.pid")                  # crash n3, then watch its shards move:
  watch -n 1 $ctl status
  bash $work/restart.sh n3     # start n3 again (a graceful restart of a running node, too)
  curl -s 127.0.0.1:${http[n1]}/metrics | grep ^timerd_

$prog: ready; Ctrl-C stops everything
EOF

# Wait for a signal; sleep in the background so that the trap runs at
# once.
sleep infinity &
echo $! >"$work/sleep.pid"
wait $! || true
