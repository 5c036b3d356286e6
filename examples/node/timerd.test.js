'use strict';

// Tests of the conversions between milliseconds and the well-known types,
// and of loading the contract. Run with: npm test

const assert = require('node:assert/strict');
const test = require('node:test');
const {
  durationToMs, load, msToDuration, msToTimestamp, timestampToMs,
} = require('./timerd');

test('msToTimestamp splits milliseconds into seconds and nanos', () => {
  assert.deepEqual(msToTimestamp(0), { seconds: '0', nanos: 0 });
  assert.deepEqual(msToTimestamp(1500), { seconds: '1', nanos: 500000000 });
  assert.deepEqual(msToTimestamp(1767225600123), { seconds: '1767225600', nanos: 123000000 });
  assert.deepEqual(msToTimestamp(1.5), { seconds: '0', nanos: 1500000 });
  // Before 1970 nanos stays in [0, 1e9): -1 ms is 1 ms short of a second.
  assert.deepEqual(msToTimestamp(-1), { seconds: '-1', nanos: 999000000 });
  // Rounding to the nanosecond may reach the next second.
  assert.deepEqual(msToTimestamp(999.9999999), { seconds: '1', nanos: 0 });
  assert.throws(() => msToTimestamp(NaN), RangeError);
});

test('timestampToMs reads what the server sends', () => {
  assert.equal(timestampToMs({ seconds: '1767225600', nanos: 123000000 }), 1767225600123);
  assert.equal(timestampToMs({ seconds: 1, nanos: 1500000 }), 1001.5);
  assert.equal(timestampToMs({ seconds: '-1', nanos: 999000000 }), -1);
  assert.ok(Number.isNaN(timestampToMs(null)));
  for (const ms of [0, 1, 999, 1000, 1767225600123, -2500]) {
    assert.equal(timestampToMs(msToTimestamp(ms)), ms);
  }
});

test('msToDuration keeps the signs of seconds and nanos alike', () => {
  assert.deepEqual(msToDuration(0), { seconds: '0', nanos: 0 });
  assert.deepEqual(msToDuration(30000), { seconds: '30', nanos: 0 });
  assert.deepEqual(msToDuration(1250), { seconds: '1', nanos: 250000000 });
  assert.deepEqual(msToDuration(-1250), { seconds: '-1', nanos: -250000000 });
  assert.deepEqual(msToDuration(-250), { seconds: '0', nanos: -250000000 });
  assert.throws(() => msToDuration(Infinity), RangeError);
  assert.equal(durationToMs(null), 0);
  for (const ms of [0, 1, 1250, -1250, 86400000]) {
    assert.equal(durationToMs(msToDuration(ms)), ms);
  }
});

test('the contract loads with its well-known types', () => {
  const v1 = load();
  assert.equal(typeof v1.TimerService, 'function');
  assert.equal(typeof v1.ClusterService, 'function');
  const fields = Object.fromEntries(v1.TimerSpec.type.field.map((f) => [f.name, f.typeName]));
  assert.equal(fields.due_time, 'google.protobuf.Timestamp');
  assert.equal(fields.delay, 'google.protobuf.Duration');
});
