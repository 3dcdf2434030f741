"""Fixtures for the interop suite: a shared redis-server, fleets of pods, socket.io clients.

Every process a test starts is registered in its `procs` table: teardown stops them all, and a
failing test's report gets the last lines of each process's log.
"""

from __future__ import annotations

import pytest

from clients import open_clients
from harness import Processes, RedisServer

PROCS = pytest.StashKey[Processes]()


@pytest.fixture
def procs(request, tmp_path):
    table = Processes(tmp_path)
    request.node.stash[PROCS] = table
    yield table
    table.stop_all()


@pytest.fixture
def redis_server(procs) -> RedisServer:
    server = RedisServer(procs)
    server.start()
    return server


@pytest.fixture
def clients_factory(procs):
    """Opens the client side for a stack (python-socketio or socket.io-client); closed at teardown."""
    opened = []

    def open_for(stack: str):
        clients = open_clients(stack, procs)
        opened.append(clients)
        return clients

    yield open_for
    for clients in opened:
        clients.close()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    table = item.stash.get(PROCS, None)
    if report.failed and table is not None and table.started:
        report.sections.append(("last lines of each process's log", table.tails()))
    return report
