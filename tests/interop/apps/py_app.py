"""A python-socketio app server as real deployments run it: AsyncServer with AsyncRedisManager on aiohttp.

Its events let a test client steer it: join a room, emit to a room or to everyone, say who it is.
The Redis manager logs its connection trouble ("Cannot receive from redis", "Cannot publish to
redis") at ERROR, which the upstream-loss test looks for in this process's log.
"""

import argparse
import logging
import os

import socketio
from aiohttp import web


def build_server(redis_url: str, pod: str) -> socketio.AsyncServer:
    sio = socketio.AsyncServer(
        async_mode="aiohttp",
        client_manager=socketio.AsyncRedisManager(redis_url),
        logger=logging.getLogger("socketio.server"),  # through the root handler, once, with timestamps
    )
    log = logging.getLogger("app")

    @sio.event
    async def join(sid, room):
        await sio.enter_room(sid, room)
        return "ok"

    @sio.event
    async def emit_to_room(sid, room, event, payload):
        log.info("emitting %s %s to room %s", event, payload, room)
        await sio.emit(event, payload, to=room)
        return "ok"

    @sio.event
    async def emit_to_all(sid, event, payload):
        if event != "warmup":  # the warm-up loop would drown everything else
            log.info("emitting %s %s to everyone", event, payload)
        await sio.emit(event, payload)
        return "ok"

    @sio.event
    async def bench_emit(sid, room, sent_at):
        # The benchmark's broadcast (tests/bench): no log line, so logging is not what it measures.
        await sio.emit("tick", sent_at, to=room)
        return "ok"

    @sio.event
    async def whoami(sid):
        return {"name": pod, "pid": os.getpid()}

    return sio


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--redis-url", required=True)
    parser.add_argument("--name", required=True)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # Per-event INFO lines and access logs would drown the Redis manager's warnings and errors.
    logging.getLogger("socketio.server").setLevel(logging.WARNING)
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    app = web.Application()
    build_server(args.redis_url, args.name).attach(app)
    web.run_app(app, host="127.0.0.1", port=args.port, print=logging.getLogger("app").info)


if __name__ == "__main__":
    main()
