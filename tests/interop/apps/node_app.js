// A Node socket.io app server as real deployments run it: @socket.io/redis-adapter over ioredis
// (`--adapter classic`, the default), its sharded adapter over node-redis (`--adapter sharded`,
// SSUBSCRIBE/SPUBLISH, what socket.io recommends for Redis Cluster), or
// @socket.io/redis-streams-adapter over ioredis (`--adapter streams`, XADD/XREAD on one stream).
//
// Its events let a test client steer it: join a room, emit to a room or to everyone, run the
// cluster-wide queries (serverCount, fetchSockets, serverSideEmit with acks), say who it is.
// Every Redis connection event is logged with a "redis-" prefix, which the upstream-loss test
// looks for in this process's log.
"use strict";

const { createServer } = require("node:http");
const { parseArgs } = require("node:util");
const { Server } = require("socket.io");
const { createAdapter, createShardedAdapter } = require("@socket.io/redis-adapter");
const { createAdapter: createStreamsAdapter } = require("@socket.io/redis-streams-adapter");
const Redis = require("ioredis");
const { createClient } = require("redis");

const { values: opts } = parseArgs({
  options: {
    port: { type: "string" },
    "redis-url": { type: "string" },
    name: { type: "string" },
    adapter: { type: "string", default: "classic" },
  },
});
const pod = opts.name;
const log = (...args) => console.log(new Date().toISOString(), pod, ...args);

function watch(role, client) {
  client.on("ready", () => log(`redis ${role} ready`));
  client.on("error", (err) => log(`redis-error ${role}: ${err.message}`));
  client.on(client instanceof Redis ? "close" : "end", () => log(`redis-close ${role}`));
  client.on("reconnecting", () => log(`redis-reconnecting ${role}`));
  return client;
}

async function makeAdapter(kind, url) {
  if (kind === "classic") {
    const pubClient = watch("pub", new Redis(url));
    return createAdapter(pubClient, watch("sub", pubClient.duplicate()));
  }
  if (kind === "sharded") {
    const pubClient = watch("pub", createClient({ url }));
    const subClient = watch("sub", pubClient.duplicate());
    await Promise.all([pubClient.connect(), subClient.connect()]);
    return createShardedAdapter(pubClient, subClient);
  }
  if (kind === "streams") {
    return createStreamsAdapter(watch("streams", new Redis(url)));
  }
  throw new Error(`unknown --adapter ${kind}`);
}

const httpServer = createServer();
const io = new Server(httpServer);

io.on("connection", (socket) => {
  socket.data.pod = pod;
  socket.on("join", (room, ack) => {
    socket.join(room);
    ack("ok");
  });
  socket.on("emit_to_room", (room, event, payload, ack) => {
    log(`emitting ${event} ${JSON.stringify(payload)} to room ${room}`);
    io.to(room).emit(event, payload);
    ack("ok");
  });
  socket.on("emit_to_all", (event, payload, ack) => {
    if (event !== "warmup") log(`emitting ${event} ${JSON.stringify(payload)} to everyone`); // warm-ups would drown the rest
    io.emit(event, payload);
    ack("ok");
  });
  // The benchmark's broadcast (tests/bench): no log line, so logging is not what it measures.
  socket.on("bench_emit", (room, sentAt, ack) => {
    io.to(room).emit("tick", sentAt);
    ack("ok");
  });
  socket.on("whoami", (ack) => ack({ name: pod, pid: process.pid }));
  socket.on("server_count", async (ack) => ack(await io.of("/").adapter.serverCount()));
  socket.on("fetch_sockets", async (ack) => {
    try {
      const sockets = await io.fetchSockets();
      ack({ sockets: sockets.map((s) => ({ id: s.id, pod: s.data.pod, rooms: [...s.rooms] })) });
    } catch (err) {
      ack({ error: String(err && err.message ? err.message : err) });
    }
  });
  // Asks every other server who it is; the adapter waits for (PUBSUB NUMSUB - 1) answers.
  socket.on("server_side_emit", (payload, ack) => {
    io.serverSideEmit("roll_call", payload, (err, answers) => {
      ack({ error: err ? String(err.message || err) : null, answers });
    });
  });
});

io.on("roll_call", (payload, answer) => answer({ pod, payload }));

// Listens only once the adapter is in place, so a test that sees the port open can rely on it.
makeAdapter(opts.adapter, opts["redis-url"]).then(
  (adapter) => {
    io.adapter(adapter);
    httpServer.listen(Number(opts.port), "127.0.0.1", () => log(`listening on ${opts.port} (${opts.adapter} adapter)`));
  },
  (err) => {
    log(`redis-error setup: ${err.message}`);
    process.exit(1);
  },
);
