// Drives socket.io-client sockets for the pytest suite: one JSON request per stdin line, one JSON
// reply per stdout line ({id, ok, result | error}). Logs go to stderr.
//
// Requests: connect {name, url}; call {name, event, args, ms} (emit with ack, waits `ms`);
// events {name} (everything the socket received, in order); disconnects {name}; close.
"use strict";

const readline = require("node:readline");
const { io } = require("socket.io-client");

const clients = new Map(); // name -> { socket, events, disconnects }
const log = (...args) => console.error(new Date().toISOString(), ...args);

function client(name) {
  const entry = clients.get(name);
  if (!entry) throw new Error(`no client named ${name}`);
  return entry;
}

function connect(name, url) {
  // forceNew: one connection per named client, as separate browsers would have.
  const socket = io(url, { transports: ["websocket"], forceNew: true, reconnection: true });
  const entry = { socket, events: [], disconnects: 0 };
  clients.set(name, entry);
  socket.onAny((event, ...args) => entry.events.push([event, ...args]));
  socket.on("disconnect", (reason) => {
    entry.disconnects += 1;
    log(`${name} disconnected: ${reason}`);
  });
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`${name} could not connect to ${url}`)), 10000);
    socket.once("connect", () => {
      clearTimeout(timer);
      log(`${name} connected to ${url} as ${socket.id}`);
      resolve(socket.id);
    });
  });
}

async function handle(req) {
  switch (req.op) {
    case "connect":
      return connect(req.name, req.url);
    case "call":
      return client(req.name).socket.timeout(req.ms).emitWithAck(req.event, ...req.args);
    case "events":
      return client(req.name).events;
    case "disconnects":
      return client(req.name).disconnects;
    case "close":
      for (const { socket } of clients.values()) socket.disconnect();
      setImmediate(() => process.exit(0));
      return "bye";
    default:
      throw new Error(`unknown op ${req.op}`);
  }
}

readline.createInterface({ input: process.stdin }).on("line", async (line) => {
  const req = JSON.parse(line);
  let reply;
  try {
    reply = { id: req.id, ok: true, result: await handle(req) };
  } catch (err) {
    reply = { id: req.id, ok: false, error: String(err && err.message ? err.message : err) };
  }
  process.stdout.write(JSON.stringify(reply) + "\n");
});
process.stdin.on("end", () => process.exit(0));
