// Package server is a timerd node's network face: it owns the node's
// store, group commit and shards, serves the public gRPC contract
// (timerd.v1.TimerService and ClusterService, with gRPC health and server
// reflection) on one address, and metrics and health probes over HTTP on
// another.
//
// A request is validated and translated here, split by shard with
// ring.Shard, and handed to the shards that own its timers; the shards'
// answers are translated back to per-item gRPC codes. Package shard knows
// nothing of gRPC; this package knows nothing of wheels, records or
// leases beyond what package shard and store export.
//
// Delivery runs through the hub, the shards' Dispatcher: every Subscribe
// stream is a subscriber of one namespace and topic with a credit (its
// max_in_flight). The hub hands a due timer to a subscriber of its topic
// with credit, round robin, by appending it to that subscriber's queue;
// the stream's sender goroutine sends it. A shard therefore never waits
// on a network write, and a slow subscriber only runs out of credit. A
// redelivery goes first to a subscriber other than the one that let the
// earlier attempt time out.
//
// In a cluster a client's stream that does not set Subscription.local is
// a one-address subscriber: the node relays to it the deliveries of the
// shards its peers own, over relays (relay.go), ordinary Subscribe
// streams to each peer marked forwarded, and sends its acks back on
// them to the owners. A relayed delivery is held by the subscriber with
// its relay, and takes its credit like any other; the invariants below
// hold for it, with "its shard" read as "its relay, and through it its
// owner's shard".
//
// # Invariants
//
//   - A subscriber's queued and unacknowledged deliveries together never
//     exceed its credit (max_in_flight): the hub takes a unit of credit
//     before it queues a delivery, and a unit comes back only when the
//     delivery is acknowledged on that stream or its ack timeout has
//     passed. A redelivery to the stream that holds the earlier attempt
//     takes that attempt's place: one entry per occurrence.
//   - A stream acknowledges only deliveries it holds and was sent; other
//     acks are ignored and counted.
//   - Every delivery the hub accepted on a stream is, when the stream ends
//     while the node keeps running, either acknowledged or handed back to
//     its shard (Shard.Return), so it is redelivered at once; one that was
//     never sent goes back without using an attempt.
//   - Each gRPC stream has three goroutines: the handler, which watches
//     the stream (expiry, and ends a stream whose Send has been blocked
//     for its ack timeout), the sender, the only one to call Send, and a
//     receiver, the only one to call Recv. All end when the stream ends.
//   - Goroutines the Server starts (serving loops, one supervisor per
//     shard, stream senders and receivers, relays) end before Close
//     returns.
package server
