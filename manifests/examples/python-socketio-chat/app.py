"""A small python-socketio chat server, ready for replicas > 1.

The only scaling code is the usual one: AsyncRedisManager on the URL in REDIS_URL. In a pod the
Switchboard injector sets REDIS_URL=redis://127.0.0.1:6379 (the sidecar), which relays every
room broadcast to the other pods. Run it locally with `cargo run -p switchboard-sidecar` in
another terminal: `python app.py` (needs python-socketio, aiohttp and redis).

Events (every reply and message names the pod that sent it, so clients can see where they are):
  whoami                -> {"pod"}
  join   room           -> {"room", "pod"}           puts the client in a room
  say    {room, text}   -> {"pod"}                   broadcasts "message" to the room
  message (server)      <- {"room", "text", "from", "pod"}
GET /healthz answers "ok" for probes.
"""

import logging
import os
import socket
from urllib.parse import urlsplit

import socketio
from aiohttp import web

POD = os.environ.get("POD_NAME") or socket.gethostname()
REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379")
PORT = int(os.environ.get("PORT", "5000"))
MAX_TEXT = 2000

log = logging.getLogger("chat")
sio = socketio.AsyncServer(
    async_mode="aiohttp",
    client_manager=socketio.AsyncRedisManager(REDIS_URL),
    cors_allowed_origins="*",  # a demo: any page may connect
)


@sio.event
async def connect(sid, environ):
    log.info("%s connected", sid)


@sio.event
async def disconnect(sid, reason=None):
    log.info("%s disconnected (%s)", sid, reason)


@sio.event
async def whoami(sid):
    return {"pod": POD}


@sio.event
async def join(sid, room):
    room = str(room)[:100]
    await sio.enter_room(sid, room)
    return {"room": room, "pod": POD}


@sio.event
async def say(sid, data):
    room = str(data.get("room", ""))[:100]
    text = str(data.get("text", ""))[:MAX_TEXT]
    # Reaches the room's members on every pod: the manager publishes it through Redis.
    await sio.emit("message", {"room": room, "text": text, "from": sid, "pod": POD}, to=room)
    return {"pod": POD}


async def healthz(request):
    return web.Response(text="ok")


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    app = web.Application()
    app.router.add_get("/healthz", healthz)
    sio.attach(app)
    redis = urlsplit(REDIS_URL)  # never log a password the URL may carry
    log.info("pod %s: socket.io on :%d, Redis adapter at %s:%s", POD, PORT, redis.hostname, redis.port)
    web.run_app(app, host="0.0.0.0", port=PORT, print=None)


if __name__ == "__main__":
    main()
