// A small Node socket.io chat server, ready for replicas > 1.
//
// The only scaling code is the usual one: @socket.io/redis-adapter over two ioredis clients on
// the URL in REDIS_URL. In a pod the Switchboard injector sets REDIS_URL=redis://127.0.0.1:6379
// (the sidecar), which relays every room broadcast to the other pods and answers the adapter's
// server count for the whole fleet. Run it locally with `cargo run -p switchboard-sidecar` in
// another terminal: `node app.js` (needs socket.io, @socket.io/redis-adapter and ioredis).
//
// Events (every reply and message names the pod that sent it, so clients can see where they are):
//   whoami                -> {pod}
//   join   room           -> {room, pod}             puts the client in a room
//   say    {room, text}   -> {pod}                   broadcasts "message" to the room
//   message (server)      <- {room, text, from, pod}
//   servers               -> {servers, pod}          socket.io servers in the fleet (serverCount)
//   members room          -> {room, members, pod}    socket ids in the room on every pod (fetchSockets)
// GET /healthz answers "ok" for probes.
"use strict";

const { createServer } = require("node:http");
const os = require("node:os");
const { Server } = require("socket.io");
const { createAdapter } = require("@socket.io/redis-adapter");
const Redis = require("ioredis");

const POD = process.env.POD_NAME || os.hostname();
const REDIS_URL = process.env.REDIS_URL || "redis://127.0.0.1:6379";
const PORT = Number(process.env.PORT || 3000);
const MAX_TEXT = 2000;
const log = (...args) => console.log(new Date().toISOString(), ...args);

const pubClient = new Redis(REDIS_URL);
const subClient = pubClient.duplicate();
for (const [role, client] of [["pub", pubClient], ["sub", subClient]]) {
  client.on("error", (err) => log(`redis ${role}: ${err.message}`));
}

const httpServer = createServer((req, res) => {
  if (req.url === "/healthz") {
    res.writeHead(200, { "content-type": "text/plain" }).end("ok");
  } else {
    res.writeHead(404).end();
  }
});
const io = new Server(httpServer, {
  adapter: createAdapter(pubClient, subClient),
  cors: { origin: "*" }, // a demo: any page may connect
});

// A client may emit without an acknowledgement callback; never call what is not there.
const reply = (ack) => (typeof ack === "function" ? ack : () => {});

io.on("connection", (socket) => {
  log(`${socket.id} connected`);
  socket.on("disconnect", (reason) => log(`${socket.id} disconnected (${reason})`));
  socket.on("whoami", (ack) => reply(ack)({ pod: POD }));
  socket.on("join", (room, ack) => {
    room = String(room).slice(0, 100);
    socket.join(room);
    reply(ack)({ room, pod: POD });
  });
  socket.on("say", (data, ack) => {
    const room = String(data?.room ?? "").slice(0, 100);
    const text = String(data?.text ?? "").slice(0, MAX_TEXT);
    // Reaches the room's members on every pod: the adapter publishes it through Redis.
    io.to(room).emit("message", { room, text, from: socket.id, pod: POD });
    reply(ack)({ pod: POD });
  });
  socket.on("members", async (room, ack) => {
    room = String(room).slice(0, 100);
    try {
      // Asks every pod through the adapter, which waits for as many replies as it counts servers.
      const sockets = await io.in(room).fetchSockets();
      reply(ack)({ room, members: sockets.map((s) => s.id).sort(), pod: POD });
    } catch (err) {
      reply(ack)({ error: String(err?.message ?? err), pod: POD });
    }
  });
  socket.on("servers", async (ack) => {
    try {
      reply(ack)({ servers: await io.of("/").adapter.serverCount(), pod: POD });
    } catch (err) {
      reply(ack)({ error: String(err?.message ?? err), pod: POD });
    }
  });
});

httpServer.listen(PORT, "0.0.0.0", () => {
  const redis = new URL(REDIS_URL); // never log a password the URL may carry
  log(`pod ${POD}: socket.io on :${PORT}, Redis adapter at ${redis.hostname}:${redis.port || 6379}`);
});

// Kubernetes stops pods with SIGTERM: close the sockets so clients reconnect elsewhere at once.
process.on("SIGTERM", () => {
  log("SIGTERM: closing");
  io.close(() => process.exit(0));
});
