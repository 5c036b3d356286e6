'use strict';

// timerd.js loads the timerd contract (api/timerd/v1/timerd.proto, and
// nothing else of the repository) and holds the conversions between
// JavaScript milliseconds and the protobuf well-known types that every
// client of timerd needs.

const path = require('node:path');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');

// The directory the proto's import paths start from: timerd/v1/timerd.proto
// lives under it. google/protobuf/timestamp.proto and duration.proto need no
// include directory: protobufjs, which proto-loader parses with, carries
// the well-known types and resolves any import of google/protobuf/*.proto
// to them before it looks on disk.
const API_DIR = path.resolve(__dirname, '..', '..', 'api');

// Options of proto-loader. keepCase keeps the proto's field names
// (due_time, delivery_id); longs: String gives 64-bit fields (seconds of a
// Timestamp, epoch of a Delivery) as decimal strings, so that none loses
// precision; enums: String gives enum values by name; oneofs adds a field
// naming the member of a oneof that is set (spec.when is "due_time" or
// "delay").
const LOADER_OPTIONS = {
  keepCase: true,
  longs: String,
  enums: String,
  defaults: true,
  oneofs: true,
  includeDirs: [API_DIR],
};

// load returns the package timerd.v1, whose TimerService and ClusterService
// are client constructors: new TimerService(addr, credentials).
function load(apiDir = API_DIR) {
  const def = protoLoader.loadSync('timerd/v1/timerd.proto', { ...LOADER_OPTIONS, includeDirs: [apiDir] });
  return grpc.loadPackageDefinition(def).timerd.v1;
}

const MS_PER_S = 1000;
const NS_PER_MS = 1e6;
const NS_PER_S = 1e9;

// msToTimestamp converts milliseconds since the Unix epoch (Date.now(), or
// a Date's getTime()) to a google.protobuf.Timestamp. Fractions of a
// millisecond are kept, to the nanosecond. nanos is always in [0, 1e9), as
// the Timestamp requires, also before 1970.
function msToTimestamp(ms) {
  if (!Number.isFinite(ms)) {
    throw new RangeError(`msToTimestamp: ${ms} is not a finite number of milliseconds`);
  }
  let seconds = Math.floor(ms / MS_PER_S);
  let nanos = Math.round((ms - seconds * MS_PER_S) * NS_PER_MS);
  if (nanos >= NS_PER_S) { // rounding reached the next second
    seconds += 1;
    nanos -= NS_PER_S;
  }
  return { seconds: String(seconds), nanos };
}

// timestampToMs converts a google.protobuf.Timestamp, as the server sends
// it (seconds as a string or a number, nanos as a number), to milliseconds
// since the Unix epoch, with the fraction of a millisecond kept. An unset
// Timestamp (null) gives NaN.
function timestampToMs(ts) {
  if (ts == null) {
    return NaN;
  }
  return Number(ts.seconds) * MS_PER_S + (ts.nanos || 0) / NS_PER_MS;
}

// msToDuration converts milliseconds to a google.protobuf.Duration. seconds
// and nanos carry the same sign, as the Duration requires; timerd refuses a
// negative delay, but the conversion itself is exact either way.
function msToDuration(ms) {
  if (!Number.isFinite(ms)) {
    throw new RangeError(`msToDuration: ${ms} is not a finite number of milliseconds`);
  }
  const sign = ms < 0 ? -1 : 1;
  const abs = Math.abs(ms);
  let seconds = Math.floor(abs / MS_PER_S);
  let nanos = Math.round((abs - seconds * MS_PER_S) * NS_PER_MS);
  if (nanos >= NS_PER_S) {
    seconds += 1;
    nanos -= NS_PER_S;
  }
  // 0 * -1 is -0, which String() prints as "0" but Object.is tells apart.
  return { seconds: String(sign * seconds || 0), nanos: sign * nanos || 0 };
}

// durationToMs converts a google.protobuf.Duration to milliseconds. An
// unset Duration (null) gives 0, as the proto reads it.
function durationToMs(d) {
  if (d == null) {
    return 0;
  }
  return Number(d.seconds) * MS_PER_S + (d.nanos || 0) / NS_PER_MS;
}

// Item codes of ItemResult.code: the numeric gRPC status codes.
const { status: Code } = grpc;

module.exports = {
  API_DIR,
  Code,
  durationToMs,
  grpc,
  load,
  msToDuration,
  msToTimestamp,
  timestampToMs,
};
