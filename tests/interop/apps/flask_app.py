"""A Flask-SocketIO app server as real deployments run it without eventlet or gevent: a Flask app
with `SocketIO(app, message_queue=<redis url>)` (Flask-SocketIO's choice for a redis:// queue is
python-socketio's sync RedisManager, over redis-py), served by gunicorn with one worker and threads
(`gunicorn -w 1 --threads 100`, WebSocket through simple-websocket), the deployment Flask-SocketIO's
docs give for threading mode. gunicorn is started from here (its documented custom-application
API) so the command line is py_app.py's.

Its events are py_app.py's, with the same names, arguments, answers and log lines. The Redis
manager logs its connection trouble ("Cannot receive from redis", "Cannot publish to redis") at
ERROR, which the upstream-loss test looks for in this process's log.

Two processes, as under any gunicorn: the one the harness starts is the arbiter (master), and the
app runs in the worker it forks. `whoami` answers both pids: a worker the arbiter had to replace
would be an app restart the tests must see.
"""

import argparse
import logging
import os

from flask import Flask
from flask_socketio import SocketIO, join_room
from gunicorn.app.base import BaseApplication

# A WebSocket holds a thread of the worker for as long as it is open (threading mode), and so does
# a pending long-poll: far more than any test opens on one pod.
THREADS = 100
# On SIGTERM gunicorn waits this long for open requests (an open WebSocket never finishes) before
# it kills its worker; well under the 5 s the harness gives a stopping process.
GRACEFUL_TIMEOUT_SECONDS = 2


def build_app(redis_url: str, pod: str) -> Flask:
    app = Flask(__name__)
    socketio = SocketIO(
        app,
        message_queue=redis_url,
        async_mode="threading",
        logger=logging.getLogger("socketio.server"),  # through the root handler, once, with timestamps
    )
    log = logging.getLogger("app")

    @socketio.event
    def join(room):
        join_room(room)
        return "ok"

    @socketio.event
    def emit_to_room(room, event, payload):
        log.info("emitting %s %s to room %s", event, payload, room)
        socketio.emit(event, payload, to=room)
        return "ok"

    @socketio.event
    def emit_to_all(event, payload):
        if event != "warmup":  # the warm-up loop would drown everything else
            log.info("emitting %s %s to everyone", event, payload)
        socketio.emit(event, payload)
        return "ok"

    @socketio.event
    def bench_emit(room, sent_at):
        # The benchmark's broadcast (tests/bench): no log line, so logging is not what it measures.
        socketio.emit("tick", sent_at, to=room)
        return "ok"

    @socketio.event
    def whoami():
        # `pid` is the process the harness started (gunicorn's arbiter), as py_app.py's is;
        # `worker_pid` is the one serving, which changes if the arbiter replaces its worker.
        return {"name": pod, "pid": os.getppid(), "worker_pid": os.getpid()}

    return app


class Gunicorn(BaseApplication):
    """gunicorn's arbiter over one gthread worker serving `app`, configured here, not from argv."""

    def __init__(self, app: Flask, options: dict):
        self.app, self.options = app, options
        super().__init__()

    def load_config(self) -> None:
        for key, value in self.options.items():
            self.cfg.set(key, value)

    def load(self) -> Flask:
        return self.app


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--redis-url", required=True)
    parser.add_argument("--name", required=True)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # Per-event INFO lines would drown the Redis manager's warnings and errors.
    logging.getLogger("socketio.server").setLevel(logging.WARNING)
    logging.getLogger("engineio.server").setLevel(logging.WARNING)
    app = build_app(args.redis_url, args.name)
    Gunicorn(app, {
        "bind": f"127.0.0.1:{args.port}",
        "workers": 1,  # Flask-SocketIO's sessions live in one process: more workers need sticky sessions
        "worker_class": "gthread",
        "threads": THREADS,
        "graceful_timeout": GRACEFUL_TIMEOUT_SECONDS,
        "errorlog": "-",  # gunicorn's own log to stderr, beside the app's (no access log, as by default)
        "proc_name": f"flask-app-{args.name}",
        # gunicorn 25.1+ opens a control socket at one path per user ($HOME/.gunicorn/gunicorn.ctl):
        # every pod of a fleet would claim the same one.
        "control_socket_disable": True,
    }).run()


if __name__ == "__main__":
    main()
