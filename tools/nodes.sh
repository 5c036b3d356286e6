# Functions that start a redis-server and timerd nodes on this machine,
# on loopback, and stop them again: sourced by tools/cluster.sh (make
# cluster) and bench/suite/cluster.sh (make bench-cluster).
#
# The caller sets, before it sources this file:
#   prog   the name its messages start with ("make cluster")
#   work   a directory of its own (mktemp -d): every process started here
#          has its pid in $work/NAME.pid, its command line in
#          $work/NAME.cmd and its output in $work/NAME.log; a node
#          restarted by hand (restart_script) is not a child of the
#          caller's shell, so the pid files, not the shell's jobs, say
#          what runs
#   BIN    the directory of timerd and timerctl
# and may set:
#   NODE_LOG_LEVEL  the nodes' --log-level (warn)
#   DETACH          1: every process runs in a session of its own
#                   (setsid), so that a Ctrl-C at the terminal reaches the
#                   caller alone, which then stops the nodes before Redis

NODE_LOG_LEVEL=${NODE_LOG_LEVEL:-warn}
DETACH=${DETACH:-0}

# require_tools checks that redis-server, redis-cli and the timerd and
# timerctl binaries in $BIN are there, and says how to get what is not.
require_tools() {
	local b
	for b in redis-server redis-cli; do
		command -v "$b" >/dev/null || { echo "$prog: $b is missing (apt-get install -y redis-server)" >&2; exit 1; }
	done
	for b in timerd timerctl; do
		[ -x "$BIN/$b" ] || { echo "$prog: $BIN/$b is missing (make build)" >&2; exit 1; }
	done
}

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
		listening "$p" && continue
		echo "$p" >>"$work/ports"
		echo "$p"
		return
	done
}

# listening PORT reports whether something accepts connections at
# 127.0.0.1:PORT.
listening() {
	(echo >"/dev/tcp/127.0.0.1/$1") 2>/dev/null
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

# launch starts process $n from its command line in $work/$n.cmd, in the
# background, appending to its log.
launch='eval "exec $(cat "$work/$n.cmd")" >>"$work/$n.log" 2>&1 </dev/null & echo $! >"$work/$n.pid"; disown $!'

# start NAME... starts the processes from their command lines. One that
# exits at once (after a kill, its port may not be free again yet) is
# started again, for half a second at most.
start() {
	local n pid
	for n in "$@"; do eval "$launch"; done
	for _ in 1 2 3 4 5; do
		sleep 0.1
		for n in "$@"; do
			read -r pid <"$work/$n.pid"
			alive "$pid" && continue
			echo "$prog: $n exited at once; starting it again" >&2
			eval "$launch"
		done
	done
}

# command_line NAME ARGS... keeps ARGS as the command line of NAME.
command_line() {
	local n=$1; shift
	if [ "$DETACH" = 1 ]; then set -- setsid "$@"; fi
	printf '%q ' "$@" >"$work/$n.cmd"
}

# start_redis starts redis-server on a free port, or on $1 when given,
# with its data in $work/redis: AOF on, fsync every second, no RDB
# snapshots. It waits until Redis answers, and sets REDIS (its URL) and
# REDIS_PORT.
start_redis() {
	REDIS_PORT=${1:-$(free_port)}
	mkdir -p "$work/redis"
	command_line redis redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --dir "$work/redis" --save '' \
		--appendonly yes --appendfsync everysec
	start redis
	REDIS=redis://127.0.0.1:$REDIS_PORT/0
	for _ in $(seq 100); do
		redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1 && return
		sleep 0.1
	done
	echo "$prog: redis-server did not answer on port $REDIS_PORT:" >&2
	tail -n 20 "$work/redis.log" >&2
	exit 1
}

# start_node NAME [FLAGS...] starts a node in the background.
start_node() {
	local n=$1; shift
	command_line "$n" "$BIN/timerd" --log-level "$NODE_LOG_LEVEL" "$@"
	start "$n"
}

# stop_process NAME SIGNAL stops a process and waits, at most a minute,
# until it has exited; then SIGKILL.
stop_process() {
	local pid
	[ -e "$work/$1.pid" ] || return 0
	read -r pid <"$work/$1.pid"
	kill -"$2" "$pid" 2>/dev/null || true
	for _ in $(seq 1200); do alive "$pid" || break; sleep 0.05; done
	kill -9 "$pid" 2>/dev/null || true
	rm -f "$work/$1.pid"
}

# stop_node NAME stops a node gracefully and waits until it has exited.
stop_node() { stop_process "$1" TERM; }

# kill_all kills every process that has a pid file in $work.
kill_all() {
	local f
	for f in "$work"/*.pid; do
		[ -e "$f" ] && kill -9 "$(cat "$f")" 2>/dev/null || true
	done
	wait 2>/dev/null || true
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
	echo "$prog: the nodes did not become ready:" >&2
	tail -n 20 "$work"/*.log >&2
	exit 1
}

# restart_script SIGNAL writes $work/restart.sh, which stops the nodes
# named as its arguments with SIGNAL (KILL or TERM; none when they are
# not running), waits until they have exited, and starts them again
# exactly as they were started.
restart_script() {
	cat >"$work/restart.sh" <<-EOF
		# Stops the nodes named as arguments (SIG$1), waits until they have
		# exited, and starts them again as they were started.
		prog=restart
		work=$(printf '%q' "$work")
		launch=$(printf '%q' "$launch")
		$(declare -f alive start)
		for n in "\$@"; do
			[ -e "\$work/\$n.cmd" ] || { echo "restart: no node \$n" >&2; exit 2; }
			[ -e "\$work/\$n.pid" ] && read -r pid <"\$work/\$n.pid" && kill -$1 "\$pid" 2>/dev/null
		done
		for n in "\$@"; do
			[ -e "\$work/\$n.pid" ] || continue
			read -r pid <"\$work/\$n.pid"
			for _ in \$(seq 1200); do alive "\$pid" || break; sleep 0.05; done
		done
		start "\$@"
	EOF
}
