// Drives socket.io-client sockets for the pytest suite: one JSON request per stdin line, one JSON
// reply per stdout line ({id, ok, result | error}). Logs go to stderr.
//
// Requests: connect {name, url, transports?} (default transports: ["websocket"]);
// try_connect {name, url, transports?, ms} (one attempt, no reconnection: the id, or null once it
// failed or after `ms`); call {name, event, args, ms} (emit with ack, waits `ms`); events {name}
// (everything the socket received, in order); disconnects {name}; connect_errors {name} (every
// connect_error and failed WebSocket upgrade, as text); transport {name} (the Engine.IO transport
// in use now); close.
"use strict";

const readline = require("node:readline");
const { io } = require("socket.io-client");

const clients = new Map(); // name -> { socket, events, disconnects, connectErrors }
const log = (...args) => console.error(new Date().toISOString(), ...args);

function client(name) {
  const entry = clients.get(name);
  if (!entry) throw new Error(`no client named ${name}`);
  return entry;
}

function open(name, url, transports, reconnection) {
  // forceNew: one connection per named client, as separate browsers would have.
  const socket = io(url, { transports, forceNew: true, reconnection });
  const entry = { socket, events: [], disconnects: 0, connectErrors: [] };
  clients.set(name, entry);
  socket.onAny((event, ...args) => entry.events.push([event, ...args]));
  socket.on("disconnect", (reason) => {
    entry.disconnects += 1;
    log(`${name} disconnected: ${reason}`);
  });
  socket.on("connect_error", (err) => {
    const detail = err && err.description ? ` (${describe(err.description)})` : "";
    const what = `${err && err.message ? err.message : err}${detail}`;
    entry.connectErrors.push(what);
    log(`${name} connect_error: ${what}`);
  });
  socket.io.on("open", () => {
    const engine = socket.io.engine;
    engine.on("upgradeError", (err) => {
      entry.connectErrors.push(`upgradeError: ${err && err.message ? err.message : err}`);
      log(`${name} upgradeError: ${err && err.message ? err.message : err}`);
    });
    engine.on("upgrade", (transport) => log(`${name} upgraded to ${transport.name}`));
  });
  return entry;
}

function describe(description) {
  if (description && typeof description === "object") {
    return description.message || description.status || JSON.stringify(description);
  }
  return String(description);
}

function connect(name, url, transports = ["websocket"]) {
  const { socket } = open(name, url, transports, true);
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`${name} could not connect to ${url}`)), 10000);
    socket.once("connect", () => {
      clearTimeout(timer);
      log(`${name} connected to ${url} as ${socket.id} over ${socket.io.engine.transport.name}`);
      resolve(socket.id);
    });
  });
}

function tryConnect(name, url, transports = ["websocket"], ms = 5000) {
  const { socket } = open(name, url, transports, false);
  return new Promise((resolve) => {
    const done = (id) => {
      clearTimeout(timer);
      if (id === null) socket.disconnect(); // no further attempts
      resolve(id);
    };
    const timer = setTimeout(() => done(null), ms);
    socket.once("connect", () => done(socket.id));
    socket.once("connect_error", () => done(null));
  });
}

async function handle(req) {
  switch (req.op) {
    case "connect":
      return connect(req.name, req.url, req.transports);
    case "try_connect":
      return tryConnect(req.name, req.url, req.transports, req.ms);
    case "call":
      return client(req.name).socket.timeout(req.ms).emitWithAck(req.event, ...req.args);
    case "events":
      return client(req.name).events;
    case "disconnects":
      return client(req.name).disconnects;
    case "connect_errors":
      return client(req.name).connectErrors;
    case "transport":
      return client(req.name).socket.io.engine.transport.name;
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
