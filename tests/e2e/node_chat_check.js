// The Node socket.io client's half of tests/e2e/node.sh's chat check, against the Node example.
//
//   node tests/e2e/node_chat_check.js URL HOST:ADDRESS
//
// Client A connects with long-polling, then upgrades to WebSocket; client B long-polls only (every
// request a new HTTP request: it works only if the ingress's affinity cookie pins it). Each has
// its own cookie jar (withCredentials gives engine.io-client one in Node), as two browsers would.
// B reconnects with a fresh jar until it sits on another pod than A. Both join one room; then:
// fetchSockets() across pods lists exactly A and B (the adapter waits for every server's reply,
// counted through the sidecar), and each receives the other's message. Needs tests/node_modules.
"use strict";

const dns = require("node:dns");
const path = require("node:path");
const { io } = require(path.join(__dirname, "..", "node_modules", "socket.io-client"));

const TIMEOUT = 15000;
const [url, resolve] = process.argv.slice(2);
if (!url) {
  console.error("usage: node_chat_check.js URL [HOST:ADDRESS]");
  process.exit(64);
}
if (resolve) {
  // Resolve the ingress host to the ingress's address in this process only (no /etc/hosts).
  const at = resolve.lastIndexOf(":");
  const [host, address] = [resolve.slice(0, at), resolve.slice(at + 1)];
  const lookup = dns.lookup;
  dns.lookup = (name, options, callback) =>
    name === host ? lookup(address, options, callback) : lookup(name, options, callback);
}
const say = (msg) => console.log(`node-chat-check: ${msg}`);

function connect(name, transports) {
  const socket = io(url, { transports, forceNew: true, reconnection: false, withCredentials: true });
  socket.texts = [];
  socket.on("message", (m) => socket.texts.push(m.text));
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`${name} could not connect to ${url}`)), TIMEOUT);
    socket.once("connect", async () => {
      clearTimeout(timer);
      socket.pod = (await socket.timeout(TIMEOUT).emitWithAck("whoami")).pod;
      say(`${name} connected (${transports.join("+")}) to pod ${socket.pod} as ${socket.id}`);
      resolve(socket);
    });
    socket.once("connect_error", (err) => reject(new Error(`${name}: ${err.message}`)));
  });
}

async function received(socket, name, text) {
  const deadline = Date.now() + TIMEOUT;
  while (!socket.texts.includes(text)) {
    if (Date.now() > deadline) throw new Error(`${name} (pod ${socket.pod}) did not receive ${text}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

async function main() {
  const a = await connect("client A", ["polling", "websocket"]);
  let b;
  for (let attempt = 1; attempt <= 20; attempt++) {
    b = await connect("client B", ["polling"]);
    if (b.pod !== a.pod) break;
    b.disconnect();
    b = undefined;
  }
  if (!b) throw new Error(`every connection landed on pod ${a.pod}`);
  await new Promise((r) => setTimeout(r, 500)); // let A's upgrade finish
  if (a.io.engine.transport.name !== "websocket") throw new Error("client A did not upgrade to WebSocket");
  const room = `node-${Date.now() % 100000}`;
  for (const s of [a, b]) await s.timeout(TIMEOUT).emitWithAck("join", room);
  const members = await a.timeout(TIMEOUT).emitWithAck("members", room);
  const want = [a.id, b.id].sort();
  if (JSON.stringify(members.members) !== JSON.stringify(want)) {
    throw new Error(`fetchSockets() in ${room}: ${JSON.stringify(members)}, expected ${JSON.stringify(want)}`);
  }
  say(`fetchSockets() on pod ${members.pod} lists exactly A and B`);
  for (const [from, to, fromName, toName] of [[a, b, "A", "B"], [b, a, "B", "A"]]) {
    const text = `from ${fromName} on ${from.pod} ${Math.random().toString(16).slice(2, 8)}`;
    await from.timeout(TIMEOUT).emitWithAck("say", { room, text });
    await received(to, `client ${toName}`, text);
    say(`client ${toName} on pod ${to.pod} received ${JSON.stringify(text)}`);
  }
  if (b.io.engine.transport.name !== "polling" || !b.connected) throw new Error("client B lost its long-polling session");
  say("PASS: messages crossed pods both ways, fetchSockets() exact, long-polling pinned by the cookie");
  a.disconnect();
  b.disconnect();
}

main().then(
  () => process.exit(0),
  (err) => {
    say(`FAIL: ${err.message}`);
    process.exit(1);
  },
);
