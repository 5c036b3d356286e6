#!/usr/bin/env bash
# The bench-suite pass of `make bench`: it starts redis-server and two
# timerd nodes (one on the embedded store, one on that Redis), then runs
# every scenario against each target in turn, interleaved (for each
# scenario: timerd-embedded, timerd-redis, then the peers: Go's
# time.AfterFunc in process, raw pipelined Redis and asynq on the same
# redis-server), and does that REPS times over, so that every target is
# measured at each moment the machine goes through, not one target while
# it is quiet and the next while it is busy. Every run measures its floor
# at the same time. It prints, per scenario, each figure's median,
# min and max over the repetitions of each target.
#
# Settings (environment):
#   BIN        directory of timerd, timerctl and timerd-benchpeer (bin)
#   OUT        where the reports go (bench-results/<UTC date and time>);
#              repetition N's are in OUT/rN/TARGET-SCENARIO
#   REPS       repetitions of the whole round (3, at least 1)
#   DURATION   load phase of each run (5s)
#   FIRE_RATE  fire's offered rate (10000), MIXED_RATE mixed's (5000)
#   BURST      burst's herd (100000)
#   BATCHES    schedule's batch sizes (100,1000)
#   DATA       the embedded store's directory (a temporary one); put it on
#              the disk you mean to measure
set -euo pipefail

BIN=${BIN:-bin}
OUT=${OUT:-bench-results/$(date -u +%Y%m%d-%H%M%S)}
REPS=${REPS:-3}
DURATION=${DURATION:-5s}
FIRE_RATE=${FIRE_RATE:-10000}
MIXED_RATE=${MIXED_RATE:-5000}
BURST=${BURST:-100000}
BATCHES=${BATCHES:-100,1000}

command -v redis-server >/dev/null || { echo "bench suite: redis-server is missing (apt-get install -y redis-server)" >&2; exit 1; }
[[ $REPS =~ ^[1-9][0-9]*$ ]] || { echo "bench suite: REPS must be a whole number of at least 1, got '$REPS'" >&2; exit 1; }
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

# bench REP LABEL SCENARIO [FLAGS...]: one run, its report in
# $OUT/rREP/LABEL-SCENARIO. A failed check is reported, not fatal: the
# table shows it.
bench() {
	local rep=$1 label=$2 scenario=$3; shift 3
	echo "== $scenario on $label (repetition $rep of $REPS)"
	"$BIN/timerctl" --timeout 30s bench "$scenario" --out "$OUT/r$rep/$label-$scenario" "$@" || echo "(exit $?)"
}

rport=$(free_port)
mkdir -p "$work/redis"
redis-server --port "$rport" --bind 127.0.0.1 --dir "$work/redis" --save '' \
	--appendonly yes --appendfsync everysec >"$work/redis.log" 2>&1 &
pids+=($!)
REDIS=redis://127.0.0.1:$rport/0
for _ in $(seq 100); do redis-cli -p "$rport" ping >/dev/null 2>&1 && break; sleep 0.1; done

# Both nodes stay up for the whole suite, so that the targets can take
# turns; the one not measured is idle.
start_timerd embedded --data-dir "${DATA:-$work/data}"
EMBEDDED=$ADDR
start_timerd redis --redis "$REDIS"
ONREDIS=$ADDR
# redis-raw and asynq run in timerd-benchpeer (the module bench/peers).
peers=0
if [ -x "$BIN/timerd-benchpeer" ]; then
	peers=1
else
	echo "bench suite: $BIN/timerd-benchpeer is missing, redis-raw and asynq left out (make build)" >&2
fi

for rep in $(seq "$REPS"); do
	for scenario in schedule fire mixed burst; do
		case $scenario in
		schedule)
			bench "$rep" timerd-embedded schedule --addr "$EMBEDDED" --duration "$DURATION" --batch "$BATCHES"
			bench "$rep" timerd-redis schedule --addr "$ONREDIS" --duration "$DURATION" --batch "$BATCHES"
			[ $peers = 1 ] && bench "$rep" redis-raw schedule --peer redis-raw --redis "$REDIS" --duration "$DURATION" --batch "$BATCHES"
			[ $peers = 1 ] && bench "$rep" asynq schedule --peer asynq --redis "$REDIS" --duration "$DURATION"
			;;
		fire)
			bench "$rep" timerd-embedded fire --addr "$EMBEDDED" --duration "$DURATION" --rate "$FIRE_RATE"
			bench "$rep" timerd-redis fire --addr "$ONREDIS" --duration "$DURATION" --rate "$FIRE_RATE"
			bench "$rep" afterfunc fire --peer afterfunc --duration "$DURATION" --rate "$FIRE_RATE"
			[ $peers = 1 ] && bench "$rep" asynq fire --peer asynq --redis "$REDIS" --duration "$DURATION" --rate "$FIRE_RATE" --drain 15s
			;;
		mixed)
			bench "$rep" timerd-embedded mixed --addr "$EMBEDDED" --duration "$DURATION" --rate "$MIXED_RATE"
			bench "$rep" timerd-redis mixed --addr "$ONREDIS" --duration "$DURATION" --rate "$MIXED_RATE"
			;;
		burst)
			bench "$rep" timerd-embedded burst --addr "$EMBEDDED" --count "$BURST"
			bench "$rep" timerd-redis burst --addr "$ONREDIS" --count "$BURST"
			bench "$rep" afterfunc burst --peer afterfunc --count "$BURST"
			;;
		esac
	done
done

echo
echo "== comparison over $REPS repetitions: median (ratio to the first column's median) [min–max]; reports in $OUT"
for scenario in schedule fire mixed burst; do
	files=()
	for rep in $(seq "$REPS"); do
		for label in timerd-embedded timerd-redis afterfunc redis-raw asynq; do
			f="$OUT/r$rep/$label-$scenario/report.json"
			[ -f "$f" ] && files+=("$f")
		done
	done
	[ ${#files[@]} -gt 0 ] && "$BIN/timerctl" bench compare --spread "${files[@]}"
done
