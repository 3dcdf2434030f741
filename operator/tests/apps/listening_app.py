"""A python-socketio server (AsyncServer + AsyncRedisManager on aiohttp) whose manager's listener
can be made to die the way python-socketio#1581 describes: the pub/sub connection is gone and the
listener task is not restarted, while the server keeps accepting sockets.

`GET /kill-listener` cancels the manager's listener task and closes its pub/sub connection (what
the sidecar sees when the adapter's connection drops and nothing resubscribes). `--write-only`
runs a pure emitter (`AsyncRedisManager(write_only=True)`), which never subscribes. Prints
`listening on <port>` once it serves.
"""

import argparse
import asyncio
import logging

import socketio
from aiohttp import web


async def kill_listener(mgr: socketio.AsyncRedisManager) -> None:
    task = getattr(mgr, "thread", None)
    if task is not None:
        task.cancel()
        try:
            await task
        except (asyncio.CancelledError, Exception):
            pass
    pubsub = getattr(mgr, "pubsub", None)
    if pubsub is not None:
        await pubsub.aclose()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--redis-url", required=True)
    parser.add_argument("--write-only", action="store_true")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    mgr = socketio.AsyncRedisManager(args.redis_url, write_only=args.write_only)
    sio = socketio.AsyncServer(async_mode="aiohttp", client_manager=mgr)
    app = web.Application()
    sio.attach(app)

    async def on_kill(request: web.Request) -> web.Response:
        await kill_listener(mgr)
        return web.Response(text="listener killed\n")

    async def on_emit(request: web.Request) -> web.Response:
        # Publishes through the manager: what a pure emitter does.
        await sio.emit("tick", {"n": 1})
        return web.Response(text="emitted\n")

    async def start_manager(app: web.Application) -> None:
        # The server starts its manager (and the listener) when the first client connects; do
        # what that connect does now, as a server that has clients would have.
        sio.manager_initialized = True
        mgr.initialize()

    app.router.add_get("/kill-listener", on_kill)
    app.router.add_get("/emit", on_emit)
    app.on_startup.append(start_manager)
    web.run_app(app, host="127.0.0.1", port=args.port, print=lambda *_: print(f"listening on {args.port}", flush=True))


if __name__ == "__main__":
    main()
