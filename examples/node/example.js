'use strict';

// example.js is a timerd client in Node.js: it subscribes to a topic,
// schedules a few one-shot timers on it (half with an absolute due time,
// half with a delay), receives each delivery, acknowledges it, and then
// checks with Get that every acknowledged timer is gone.
//
//   node example.js [--addr 127.0.0.1:7070] [--namespace example]
//                   [--topic node-example] [--count 4] [--delay-ms 1500]
//                   [--timeout-ms 30000]
//
// It prints one line per step (scheduled, received, acked) and a summary,
// and exits 0 when every timer was delivered, none before its due time,
// and acknowledged; otherwise it prints the reason on stderr and exits 1.

const crypto = require('node:crypto');
const { parseArgs } = require('node:util');
const {
  Code, grpc, load, msToDuration, msToTimestamp, timestampToMs,
} = require('./timerd');

const { values: flags } = parseArgs({
  options: {
    'addr': { type: 'string', default: '127.0.0.1:7070' },
    'namespace': { type: 'string', default: 'example' },
    'topic': { type: 'string', default: 'node-example' },
    'count': { type: 'string', default: '4' },
    'delay-ms': { type: 'string', default: '1500' },
    'timeout-ms': { type: 'string', default: '30000' },
  },
});

const count = Number(flags.count);
const delayMs = Number(flags['delay-ms']);
const timeoutMs = Number(flags['timeout-ms']);

// call turns a unary client method into a promise.
function call(client, method, request, deadlineMs = 10000) {
  return new Promise((resolve, reject) => {
    client[method](request, { deadline: Date.now() + deadlineMs }, (err, resp) => (err ? reject(err) : resolve(resp)));
  });
}

// waitForReady resolves once the channel to addr is connected.
function waitForReady(client, addr, deadlineMs) {
  return new Promise((resolve, reject) => {
    client.waitForReady(Date.now() + deadlineMs, (err) => {
      if (err) {
        reject(new Error(`nothing answers at ${addr}: is timerd running? (${err.message})`));
      } else {
        resolve();
      }
    });
  });
}

const sleep = (ms) => new Promise((resolve) => { setTimeout(resolve, ms); });

async function main() {
  if (!Number.isInteger(count) || count < 1 || !(delayMs >= 0) || !(timeoutMs > 0)) {
    throw new Error('--count must be a positive integer, --delay-ms non-negative and --timeout-ms positive');
  }
  const { TimerService } = load();
  const client = new TimerService(flags.addr, grpc.credentials.createInsecure());
  await waitForReady(client, flags.addr, 5000);

  // Ids unique to this run, so that running the example again does not
  // meet the timers of an earlier run.
  const run = `${Date.now().toString(36)}-${process.pid}`;
  const ids = Array.from({ length: count }, (_, i) => `node-${run}-${i}`);
  const due = new Map(); // id -> due time in ms, as the server resolved it
  const received = new Set(); // ids delivered and acknowledged
  let early = 0;

  // Subscribe first: a timer that comes due before anyone subscribes waits
  // for a subscriber, so the order is not required, but this way the
  // deliveries come as soon as they are due.
  const stream = client.Subscribe();
  let allReceived;
  const done = new Promise((resolve, reject) => {
    allReceived = resolve;
    stream.on('error', (err) => {
      if (err.code !== grpc.status.CANCELLED) {
        reject(new Error(`subscribe: ${err.message}`));
      }
    });
  });
  stream.on('data', ({ delivery: d }) => {
    const now = Date.now();
    const dueMs = timestampToMs(d.due_time);
    const firedMs = timestampToMs(d.fired_time);
    // Date.now() is whole milliseconds, rounded down; so is the due time
    // it is compared with, or a delivery in the due time's own
    // millisecond would look early.
    const lateMs = now - Math.floor(dueMs);
    const ours = ids.includes(d.id);
    const tooEarly = firedMs < dueMs || lateMs < 0;
    if (tooEarly) {
      early += 1;
    }
    console.log(`received id=${d.id} attempt=${d.attempt} payload=${JSON.stringify(d.payload.toString())}`
      + ` due=${new Date(dueMs).toISOString()} late_ms=${lateMs}`
      + ` fired_after_due_ms=${(firedMs - dueMs).toFixed(3)}${tooEarly ? ' EARLY' : ''}${ours ? '' : ' (not ours)'}`);
    // Acknowledge it, so that it is not delivered again. Delivery is at
    // least once: a consumer that sees the same delivery_id twice has
    // done its work already and acknowledges it again.
    stream.write({ ack: { delivery_ids: [d.delivery_id] } });
    console.log(`acked id=${d.id} delivery_id=${d.delivery_id}`);
    if (ours) {
      received.add(d.id);
      if (received.size === ids.length) {
        allReceived();
      }
    }
  });
  stream.write({
    subscription: {
      namespace: flags.namespace,
      topic: flags.topic,
      max_in_flight: 10,
      ack_timeout: msToDuration(10000),
    },
  });

  // Schedule the timers in one batch: even ones at an absolute due time,
  // odd ones after a delay that the server resolves against its clock.
  const now = Date.now();
  const timers = ids.map((id, i) => {
    const spec = {
      namespace: flags.namespace,
      id,
      topic: flags.topic,
      payload: Buffer.from(`hello from node, timer ${i}`),
    };
    const inMs = delayMs + 100 * i;
    if (i % 2 === 0) {
      spec.due_time = msToTimestamp(now + inMs);
    } else {
      spec.delay = msToDuration(inMs);
    }
    return spec;
  });
  // A request id lets a retry of this call be told from a new call.
  const resp = await call(client, 'Schedule', { timers, request_id: crypto.randomBytes(16).toString('hex') });
  resp.results.forEach((r, i) => {
    if (r.code !== Code.OK) {
      throw new Error(`schedule ${r.id}: code ${r.code}: ${r.message}`);
    }
    due.set(r.id, timestampToMs(r.due_time));
    const by = timers[i].due_time ? 'due_time' : `delay=${delayMs + 100 * i}ms`;
    console.log(`scheduled id=${r.id} by=${by} due=${new Date(due.get(r.id)).toISOString()}`);
  });

  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(
      `timed out after ${timeoutMs} ms with ${received.size} of ${ids.length} timers received`,
    )), timeoutMs);
  });
  try {
    await Promise.race([done, timeout]);

    // An acknowledged one-shot timer is deleted; the ack is a message on
    // the stream with no answer, so ask for each timer until it is gone.
    for (const id of ids) {
      for (;;) {
        try {
          await call(client, 'Get', { namespace: flags.namespace, id });
        } catch (err) {
          if (err.code === grpc.status.NOT_FOUND) {
            break;
          }
          throw err;
        }
        await Promise.race([sleep(50), timeout]);
      }
    }
  } finally {
    clearTimeout(timer);
    stream.end();
    stream.cancel();
    client.close();
  }
  console.log(`done: scheduled ${ids.length}, received ${received.size}, acked ${received.size}, early ${early}`);
  if (early > 0) {
    throw new Error(`${early} deliveries came before their due time`);
  }
}

main().catch((err) => {
  console.error(`error: ${err.message}`);
  process.exit(1);
});
