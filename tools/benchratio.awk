# benchratio.awk reads `go test -bench` output and prints each figure
# beside its peer from the same run, as a ratio: the wheel beside Go's
# runtime timers, the fenced group commit beside raw pipelined Redis writes,
# the node's gRPC schedule path beside the store's commits alone.
# With -count > 1 it uses each benchmark's median. Used by `make bench`.
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
	if (metric("timers/s") != "") rates[name] = rates[name] " " metric("timers/s")
	if (metric("fire+ack/s") != "") rates[name] = rates[name] " " metric("fire+ack/s")
	if (metric("deliveries/s") != "") rates[name] = rates[name] " " metric("deliveries/s")
	if (metric("s/load") != "") loads[name] = loads[name] " " metric("s/load")
}
function rrow(label, ours, peer, peername) {
	if (!(ours in rate)) return
	if (peer in rate)
		printf "  %-30s %9.0f /s   %-26s %9.0f /s   %4.2fx\n", label, rate[ours], peername, rate[peer], rate[ours] / rate[peer]
	else
		printf "  %-30s %9.0f /s\n", label, rate[ours]
}
function row(label, ours, peer, peername) {
	if (!(ours in ns) || !(peer in ns)) return
	printf "  %-22s %9.1f ns   %-16s %9.1f ns   %5.1fx\n", label, ns[ours], peername, ns[peer], ns[peer] / ns[ours]
}
END {
	for (n in runs) ns[n] = median(runs[n])
	for (n in mems) mem[n] = median(mems[n])
	for (n in rates) rate[n] = median(rates[n])
	for (n in loads) load[n] = median(loads[n])
	if ("BenchmarkShardScheduleRedis" in rate || "BenchmarkShardScheduleEmbedded" in rate) {
		print ""
		print "durable path, same run (ratio = timerd / peer, higher is better):"
		rrow("schedule, Redis (fenced)", "BenchmarkShardScheduleRedis", "BenchmarkRedisPipelineRaw/per-shard-batch", "raw HSET per shard batch")
		rrow("schedule, Redis (fenced)", "BenchmarkShardScheduleRedis", "BenchmarkRedisPipelineRaw/per-record", "raw HSET per record")
		rrow("schedule, embedded (fsync)", "BenchmarkShardScheduleEmbedded", "", "")
		rrow("fire+ack, Redis, one shard", "BenchmarkShardFireAckRedis", "", "")
		rrow("fire+ack, embedded, one shard", "BenchmarkShardFireAckEmbedded", "", "")
		split("redis embedded", kinds, " ")
		for (i = 1; i in kinds; i++)
			if (("BenchmarkShardLoad1M/" kinds[i]) in load)
				printf "  %-30s %9.2f s\n", "load 1M timers, " kinds[i], load["BenchmarkShardLoad1M/" kinds[i]]
	}
	if ("BenchmarkServerSchedule/batch=1000" in rate) {
		print ""
		print "node through gRPC, embedded store, same run (ratio = timerd / peer):"
		rrow("schedule, batches of 100", "BenchmarkServerSchedule/batch=100", "BenchmarkServerSchedule/batch=100/peer=store-commit", "store commits alone")
		rrow("schedule, batches of 1000", "BenchmarkServerSchedule/batch=1000", "BenchmarkServerSchedule/batch=1000/peer=store-commit", "store commits alone")
		rrow("schedule, Redis, batches of 1000", "BenchmarkServerScheduleRedis", "BenchmarkRedisPipelineRaw/per-shard-batch", "raw HSET per shard batch")
		rrow("fire+ack, 1 stream", "BenchmarkServerFireAck/streams=1", "", "")
		rrow("fire+ack, 4 streams", "BenchmarkServerFireAck/streams=4", "", "")
	}
	if (!("BenchmarkWheelAdd" in ns)) exit
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
