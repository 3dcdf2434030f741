// Load for the application-level benchmark (tests/bench/apps.py): many real socket.io-client
// sockets in rooms on several app servers, and emitters that ask the servers to broadcast to a
// room, either at a fixed rate or as fast as the servers acknowledge (a bounded window).
//
// Every broadcast carries its send time (performance.now(), one clock: every socket lives in this
// process), so each receiving socket records an end-to-end latency. Prints one JSON line:
// {sent, acked, delivered, expected, elapsed_s, p50_us, p99_us}.
//
// node app_load.js --urls u1,u2,u3 --clients-per-server 100 --rooms 10 --mode rate|max
//                  --rate 200 --seconds 10 --window 64
"use strict";

const { parseArgs } = require("node:util");
const { performance } = require("node:perf_hooks");
const { io } = require("socket.io-client");

const { values: opts } = parseArgs({
  options: {
    urls: { type: "string" },
    "clients-per-server": { type: "string", default: "100" },
    rooms: { type: "string", default: "10" },
    mode: { type: "string", default: "rate" },
    rate: { type: "string", default: "200" },
    seconds: { type: "string", default: "10" },
    window: { type: "string", default: "64" },
  },
});
const urls = opts.urls.split(",");
const perServer = Number(opts["clients-per-server"]);
const rooms = Number(opts.rooms);
const seconds = Number(opts.seconds);
const log = (...args) => console.error(new Date().toISOString(), ...args);

const latencies = []; // microseconds, one per delivery
let delivered = 0;
let measuring = false;
const members = new Array(rooms).fill(0);

function connect(url) {
  const socket = io(url, { transports: ["websocket"], forceNew: true, reconnection: false });
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`could not connect to ${url}`)), 20000);
    socket.once("connect", () => {
      clearTimeout(timer);
      resolve(socket);
    });
    socket.once("connect_error", (err) => {
      clearTimeout(timer);
      reject(err);
    });
  });
}

async function main() {
  const receivers = [];
  for (const [s, url] of urls.entries()) {
    const batch = [];
    for (let i = 0; i < perServer; i++) batch.push(connect(url));
    const sockets = await Promise.all(batch);
    for (const [i, socket] of sockets.entries()) {
      const room = (s * perServer + i) % rooms;
      await socket.timeout(20000).emitWithAck("join", `room-${room}`);
      members[room] += 1;
      socket.on("tick", (sentAt) => {
        if (!measuring) return;
        delivered += 1;
        latencies.push((performance.now() - sentAt) * 1000);
      });
      receivers.push(socket);
    }
  }
  // One emitter per server, each its own connection, as each server's own traffic would be.
  const emitters = await Promise.all(urls.map(connect));
  log(`connected ${receivers.length} receivers in ${rooms} rooms, ${emitters.length} emitters`);

  // Warm-up: every server's adapter has its subscriptions and every path is hot.
  for (let i = 0; i < 50; i++) {
    await Promise.all(emitters.map((e, k) => e.timeout(20000).emitWithAck("bench_emit", `room-${(i + k) % rooms}`, performance.now())));
  }
  await new Promise((r) => setTimeout(r, 500));

  let sent = 0;
  let acked = 0;
  let expected = 0;
  measuring = true;
  const start = performance.now();
  const end = start + seconds * 1000;
  const emit = (k) => {
    const room = (sent + k) % rooms;
    sent += 1;
    expected += members[room];
    return emitters[k % emitters.length]
      .timeout(20000)
      .emitWithAck("bench_emit", `room-${room}`, performance.now())
      .then(() => { acked += 1; });
  };
  if (opts.mode === "rate") {
    const rate = Number(opts.rate);
    const pending = [];
    // Paced on the clock: a slow tick is caught up, so the offered rate is the asked one.
    while (performance.now() < end) {
      const due = Math.floor(((performance.now() - start) / 1000) * rate);
      while (sent < due) pending.push(emit(sent));
      await new Promise((r) => setTimeout(r, 1));
    }
    await Promise.all(pending);
  } else {
    const window = Number(opts.window);
    const lanes = [];
    for (let lane = 0; lane < window; lane++) {
      lanes.push((async () => {
        while (performance.now() < end) await emit(lane);
      })());
    }
    await Promise.all(lanes);
  }
  const sendDone = performance.now();
  // Wait for the last deliveries (bounded): a message still in flight counts as late, not lost.
  const drainUntil = performance.now() + 10000;
  while (delivered < expected && performance.now() < drainUntil) {
    await new Promise((r) => setTimeout(r, 10));
  }
  const elapsed = (Math.max(sendDone, performance.now() - 0) - start) / 1000;
  measuring = false;
  latencies.sort((a, b) => a - b);
  const q = (p) => (latencies.length ? latencies[Math.min(latencies.length - 1, Math.floor(latencies.length * p))] : 0);
  const sendSeconds = (sendDone - start) / 1000;
  console.log(JSON.stringify({
    sent, acked, delivered, expected,
    send_s: sendSeconds, elapsed_s: elapsed,
    delivered_per_s: delivered / elapsed,
    p50_us: q(0.5), p99_us: q(0.99),
  }));
  for (const s of [...receivers, ...emitters]) s.disconnect();
  setImmediate(() => process.exit(0));
}

main().catch((err) => {
  log(`app_load failed: ${err && err.stack ? err.stack : err}`);
  process.exit(1);
});
