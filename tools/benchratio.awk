# benchratio.awk reads `go test -bench` output from the wheel package and
# prints each wheel figure beside its Go runtime peer from the same run, as
# a ratio. With -count > 1 it uses each benchmark's median. Used by
# `make bench`.
function metric(unit,   i) {
	for (i = 3; i < NF; i++) if ($(i + 1) == unit) return $i
	return ""
}
function median(list,   v, n, i, j, t) {
	n = split(list, v, " ")
	for (i = 2; i <= n; i++)
		for (j = i; j > 1 && v[j - 1] + 0 > v[j] + 0; j--) {
			t = v[j]; v[j] = v[j - 1]; v[j - 1] = t
		}
	return n % 2 ? v[(n + 1) / 2] : (v[n / 2] + v[n / 2 + 1]) / 2
}
/^Benchmark/ {
	name = $1
	sub(/-[0-9]+$/, "", name)
	runs[name] = runs[name] " " metric("ns/op")
	if (metric("B/timer") != "") mems[name] = mems[name] " " metric("B/timer")
}
function row(label, ours, peer, peername) {
	if (!(ours in ns) || !(peer in ns)) return
	printf "  %-22s %9.1f ns   %-16s %9.1f ns   %5.1fx\n", label, ns[ours], peername, ns[peer], ns[peer] / ns[ours]
}
END {
	for (n in runs) ns[n] = median(runs[n])
	for (n in mems) mem[n] = median(mems[n])
	print ""
	print "wheel vs Go runtime timers, same run (ratio = peer / wheel, higher is better):"
	row("add", "BenchmarkWheelAdd", "BenchmarkStdAfterFunc", "time.AfterFunc")
	row("cancel, oldest first", "BenchmarkWheelCancel/order=fifo", "BenchmarkStdStop/order=fifo", "Timer.Stop")
	row("cancel, at random", "BenchmarkWheelCancel/order=random", "BenchmarkStdStop/order=random", "Timer.Stop")
	if (("BenchmarkWheelAdd" in mem) && ("BenchmarkStdAfterFunc" in mem))
		printf "  %-22s %9.1f B    %-16s %9.1f B    %5.1fx\n", "memory per timer", mem["BenchmarkWheelAdd"], "time.AfterFunc", mem["BenchmarkStdAfterFunc"], mem["BenchmarkStdAfterFunc"] / mem["BenchmarkWheelAdd"]
	split("1000000 10000000", pending, " ")
	for (i = 1; i in pending; i++) {
		n = "BenchmarkWheelAdvance/pending=" pending[i]
		if (n in ns)
			printf "  %-22s %9.1f ns   (%.1f million timers/s)\n", "expiry, " pending[i] / 1e6 "M pending", ns[n], 1000 / ns[n]
	}
	if ("BenchmarkWheelBurst" in ns)
		printf "  %-22s %9.1f ns   (%.1f million timers/s)\n", "burst of 1M in 1 ms", ns["BenchmarkWheelBurst"], 1000 / ns["BenchmarkWheelBurst"]
}
