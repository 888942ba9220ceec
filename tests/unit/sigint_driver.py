"""``archfleet build --push`` as the console script runs it (the function pyproject.toml's
``[project.scripts]`` names, then ``sys.exit`` of its answer), in this process, against the
in-process registry of test_publish_flow, sending itself ONE SIGINT at the point named by
argv[1]. Used by test_sigint_exit.py; not a test itself.

``python sigint_driver.py POINT OUT``: OUT receives, at exit, the digest the tag points at
(``null`` when it did not move). The points, in the order a run meets them:

- ``verifying``: while the children are verified (no tag has moved yet)
- ``moving``: while the tags move (inside ``hold_interrupts``)
- ``moved``: after the tags moved, the run still going (``archfleet_index_pushed``)
- ``task-done``: the run's task is done, ``asyncio.run`` has not returned (asyncio.Runner's own
  handler then raises KeyboardInterrupt directly)
- ``executor``: while ``asyncio.run`` shuts the default executor down
- ``metadata``: after ``asyncio.run`` returned, while ``--metadata-file`` is written
- ``main-returned``: after the command's function returned, before the process exits
- ``thread-join``: while the interpreter joins the threads left at exit
- ``atexit``: in an atexit callback
- ``teardown``: while the interpreter tears its modules down (after it stopped handling signals)
"""

from __future__ import annotations

import asyncio
import atexit
import json
import os
import signal
import sys
import threading
import time
import tomllib
from pathlib import Path

import httpx

from archfleet import cli, pipeline
from archfleet.api import hookimpl
from archfleet.manager import make_hooks
from archfleet.registry import RegistryClient
from fakeregistry import FakeRegistry, digest_of
from stubs import AMD, CTX, facts, plan, scripted_option as option
from test_publish_flow import CONFIG, HOST, Pushing

POINT, OUT = sys.argv[1], Path(sys.argv[2])
TAG = f"{HOST}/app:1"
fake = FakeRegistry(HOST)


def ctrl_c() -> None:
    os.kill(os.getpid(), signal.SIGINT)


def moved() -> bool:
    return ("app", "1") in fake.manifests


def ctrl_c_once_moved() -> None:
    """For the points the CLI's first asyncio.run (the input checks) passes too."""
    if moved():
        ctrl_c()


@atexit.register  # registered first: runs last
def _tell():
    tagged = fake.manifests.get(("app", "1"))  # the index's body
    OUT.write_text(json.dumps(digest_of(tagged[0]) if tagged else None))


class Points:
    @hookimpl
    def archfleet_index_pushed(self, ref, digest):
        if POINT == "moved":
            ctrl_c()

    @hookimpl
    def archfleet_session_end(self, session):
        async def end():
            if POINT == "task-done":  # runs once the run's task has returned
                asyncio.get_running_loop().call_soon(ctrl_c_once_moved)
            if POINT == "thread-join":
                started = threading.Event()
                shutting_down = threading.Event()
                threading._register_atexit(shutting_down.set)  # the interpreter's exit, before its joins

                def late():  # not a daemon: the interpreter joins it at exit
                    started.set()
                    shutting_down.wait()
                    ctrl_c()
                    time.sleep(0.2)
                threading.Thread(target=late).start()
                started.wait()
        return end()


hooks = make_hooks(load_entrypoints=False, builtins=())
hooks.register(Pushing(fake), name="pushing")
hooks.register(Points(), name="points")
chosen = [option(AMD, "n0")]


async def make_plan(hooks, request, config, session, client=None):
    return pipeline.Planned(facts("n0"), tuple(chosen), plan(*chosen), None, (), request)


def wrap(module, name, before):
    real = getattr(module, name)
    if asyncio.iscoroutinefunction(real):
        async def wrapper(*args, **kwargs):
            before()
            await asyncio.sleep(0.05)  # a request in flight
            return await real(*args, **kwargs)
    else:
        def wrapper(*args, **kwargs):
            before()
            return real(*args, **kwargs)
    setattr(module, name, wrapper)


cli._hooks = lambda: hooks
pipeline.make_plan = make_plan
pipeline.RegistryClient = lambda insecure: RegistryClient(insecure, transport=httpx.MockTransport(fake),
                                                          docker_config=CONFIG)
if POINT == "verifying":
    wrap(pipeline, "verify", ctrl_c)
elif POINT == "moving":
    wrap(pipeline.index_mod, "move_tags", ctrl_c)
elif POINT == "executor":
    wrap(asyncio.base_events.BaseEventLoop, "shutdown_default_executor", ctrl_c_once_moved)
elif POINT == "metadata":
    wrap(pipeline, "write_metadata", ctrl_c)
elif POINT == "atexit":
    atexit.register(ctrl_c)
elif POINT == "teardown":
    class Late:
        def __del__(self):
            ctrl_c()
    sys.modules["sigint_driver_late"] = late = type(sys)("sigint_driver_late")
    late.value = Late()
    del late

if POINT == "main-returned":
    real_main = cli.main

    def main(argv=None):
        try:
            return real_main(argv)
        finally:
            ctrl_c()
    cli.main = main  # entrypoint() finds it here too

script = tomllib.loads((Path(__file__).resolve().parents[2] / "pyproject.toml").read_text())
module, _, name = script["project"]["scripts"]["archfleet"].partition(":")
assert module == "archfleet.console", module  # which runs cli.entrypoint
import importlib  # noqa: E402

command = getattr(importlib.import_module(module), name)
sys.argv = ["archfleet", "build", "--progress", "quiet", "--no-local", "--platform", "linux/amd64", "-t", TAG,
            "--push", "--metadata-file", "meta.json", str(CTX)]
sys.exit(command())
