#!/usr/bin/env bash
# The short bench-suite pass of `make bench`: it starts timerd itself
# (embedded store, then Redis), runs every scenario against each with
# timerctl bench, measures the peers (Go's time.AfterFunc in process; raw
# pipelined Redis and asynq on the same redis-server), and prints the
# comparison tables.
#
# Settings (environment):
#   BIN        directory of timerd, timerctl and timerd-benchpeer (bin)
#   OUT        where the reports go (bench-results/<UTC date and time>)
#   DURATION   load phase of each run (5s)
#   FIRE_RATE  fire's offered rate (10000), MIXED_RATE mixed's (5000)
#   BURST      burst's herd (100000)
#   BATCHES    schedule's batch sizes (100,1000)
#   DATA       the embedded store's directory (a temporary one); put it on
#              the disk you mean to measure
set -euo pipefail

BIN=${BIN:-bin}
OUT=${OUT:-bench-results/$(date -u +%Y%m%d-%H%M%S)}
DURATION=${DURATION:-5s}
FIRE_RATE=${FIRE_RATE:-10000}
MIXED_RATE=${MIXED_RATE:-5000}
BURST=${BURST:-100000}
BATCHES=${BATCHES:-100,1000}

command -v redis-server >/dev/null || { echo "bench suite: redis-server is missing (apt-get install -y redis-server)" >&2; exit 1; }
mkdir -p "$OUT"
work=$(mktemp -d)
pids=()
cleanup() {
	for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
	wait 2>/dev/null || true
	rm -rf "$work"
}
trap cleanup EXIT

# free_port prints a loopback TCP port nothing listens on.
free_port() {
	local p
	while :; do
		p=$((20000 + RANDOM % 30000))
		(echo >"/dev/tcp/127.0.0.1/$p") 2>/dev/null || { echo "$p"; return; }
	done
}

# ready PORT reports whether the node's /readyz at PORT answers 200.
ready() {
	local line
	exec 3<>"/dev/tcp/127.0.0.1/$1" 2>/dev/null || return 1
	printf 'GET /readyz HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n' >&3
	read -r line <&3 || true
	exec 3<&- 3>&-
	[[ $line == *" 200 "* ]]
}

# start_timerd NAME [FLAGS...] starts a node and waits until it is ready;
# it sets ADDR.
start_timerd() {
	local name=$1; shift
	local grpc http
	grpc=$(free_port); http=$(free_port)
	"$BIN/timerd" --grpc-addr "127.0.0.1:$grpc" --http-addr "127.0.0.1:$http" --log-level warn "$@" \
		>"$work/$name.log" 2>&1 &
	pids+=($!)
	ADDR=127.0.0.1:$grpc
	for _ in $(seq 300); do
		ready "$http" && return
		sleep 0.1
	done
	echo "bench suite: timerd ($name) did not become ready:" >&2
	cat "$work/$name.log" >&2
	exit 1
}

stop_last() {
	local i=$((${#pids[@]} - 1))
	kill "${pids[$i]}" && wait "${pids[$i]}" 2>/dev/null || true
	unset "pids[$i]"
}

# bench LABEL SCENARIO [FLAGS...]: one run, its report in $OUT/LABEL-SCENARIO.
# A failed check is reported, not fatal: the table shows it.
bench() {
	local label=$1 scenario=$2; shift 2
	echo "== $scenario on $label"
	"$BIN/timerctl" --timeout 30s bench "$scenario" --out "$OUT/$label-$scenario" "$@" || echo "(exit $?)"
}

timerd_pass() {
	local label=$1
	bench "$label" schedule --addr "$ADDR" --duration "$DURATION" --batch "$BATCHES"
	bench "$label" fire --addr "$ADDR" --duration "$DURATION" --rate "$FIRE_RATE"
	bench "$label" mixed --addr "$ADDR" --duration "$DURATION" --rate "$MIXED_RATE"
	bench "$label" burst --addr "$ADDR" --count "$BURST"
}

start_timerd embedded --data-dir "${DATA:-$work/data}"
timerd_pass timerd-embedded
stop_last

rport=$(free_port)
mkdir -p "$work/redis"
redis-server --port "$rport" --bind 127.0.0.1 --dir "$work/redis" --save '' \
	--appendonly yes --appendfsync everysec >"$work/redis.log" 2>&1 &
pids+=($!)
REDIS=redis://127.0.0.1:$rport/0
for _ in $(seq 100); do redis-cli -p "$rport" ping >/dev/null 2>&1 && break; sleep 0.1; done

start_timerd redis --redis "$REDIS"
timerd_pass timerd-redis
stop_last

# The floor of lateness on this machine: Go's time.AfterFunc in the
# bench's own process.
bench afterfunc fire --peer afterfunc --duration "$DURATION" --rate "$FIRE_RATE"
bench afterfunc burst --peer afterfunc --count "$BURST"

bench redis-raw schedule --peer redis-raw --redis "$REDIS" --duration "$DURATION" --batch "$BATCHES"
if [ -x "$BIN/timerd-benchpeer" ]; then
	bench asynq schedule --peer asynq --redis "$REDIS" --duration "$DURATION"
	bench asynq fire --peer asynq --redis "$REDIS" --duration "$DURATION" --rate "$FIRE_RATE" --drain 15s
else
	echo "bench suite: $BIN/timerd-benchpeer is missing, asynq left out (make build)" >&2
fi

echo
echo "== comparison (first column is the reference; reports in $OUT)"
for scenario in schedule fire mixed burst; do
	files=()
	for label in timerd-embedded timerd-redis afterfunc redis-raw asynq; do
		f="$OUT/$label-$scenario/report.json"
		[ -f "$f" ] && files+=("$f")
	done
	[ ${#files[@]} -gt 0 ] && "$BIN/timerctl" bench compare "${files[@]}"
done
