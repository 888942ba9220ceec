"""The console script (pyproject.toml's ``archfleet``): :func:`archfleet.cli.entrypoint`, with
the cyclic garbage collector off while archfleet's modules load, and a Ctrl-C noted, not
raised, until a command's run handles it.

Loading what a build needs makes some 100,000 objects and next to no garbage; the collector,
run by allocation counts, spent ~8 ms of the ~100 ms that loading takes looking through them
(issue 17: ``import archfleet.cli, archfleet.pipeline, httpx``, median of 6, 105 -> 97 ms). The
command turns it back on when its run starts (:func:`archfleet.cli._run`), after freezing what
the imports made.

Python's own SIGINT handler raises KeyboardInterrupt wherever the main thread is, and some of
those places drop it: a weakref callback of the import system ("Exception ignored in:
<function _get_module_lock.<locals>.cb>"), a finalizer. A Ctrl-C ~0.1 s after the start was
lost that way 1-3 times in 100, and the build went on and pushed, exit 0 (found by the
fresh-user helper). :class:`Pressed` notes it instead; :func:`archfleet.cli._run` raises it
before a command's run starts, and handles one during the run itself."""

import gc
import os
import signal
import sys
import threading


class Pressed:
    """SIGINT's (and an unhandled SIGTERM's) handler from the console script's start until a
    command's run takes over, and between runs: the first one is noted (``count``, ``signum``)
    for :func:`archfleet.cli._run` to raise, or a command without a run
    (:func:`archfleet.cli._no_run`); a second one ends the process at once with the one line
    and exit 130 (SystemExit: a KeyboardInterrupt through click printed an empty line first)."""

    def __init__(self):
        self.count = 0
        self.signum: int | None = None

    def __call__(self, signum, frame):
        self.count += 1
        self.signum = signum
        if self.count > 1:
            sys.stderr.write(f"archfleet: error: {word(signum)}\n")
            raise SystemExit(130)


def word(signum: int | None) -> str:
    """How an interrupt by ``signum`` is said: ``interrupted``, or ``terminated (SIGTERM)``."""
    return "terminated (SIGTERM)" if signum == signal.SIGTERM else "interrupted"


def entrypoint() -> None:
    """Run the ``archfleet`` command line; exits with its code. A Ctrl-C while the modules
    load (the first ~80 ms) is noted (:class:`Pressed`), not a traceback. With a server of this
    install and this context running (:mod:`archfleet.server`), the command runs there, in a
    process that has everything loaded already; without one, it runs here and (unless
    ``ARCHFLEET_SERVER`` says ``manual`` or ``0``) starts one in the background as it exits
    (:func:`archfleet.serverclient.start_in_background`), for the next command."""
    gc.disable()
    pressed = _noting()
    from . import serverclient

    if serverclient.wanted(sys.argv):
        code = serverclient.run(sys.argv, pressed)
        if code is not None:
            # nothing of this process's own to finish (the command ran in the server): no
            # interpreter teardown (a few ms)
            for stream in (sys.stdout, sys.stderr):
                try:
                    if stream is not None:
                        stream.flush()
                except (OSError, ValueError):
                    pass
            os._exit(code)
        if serverclient.starts_one(sys.argv):
            import atexit

            atexit.register(serverclient.start_in_background)
    _run()


def run_here() -> None:
    """The command of ``sys.argv``, in this process, as :func:`entrypoint` runs it without a
    server (the server's fork for a command calls this). Exits with its code."""
    gc.disable()
    _noting()
    _run()


def _noting() -> "Pressed | None":
    if threading.current_thread() is not threading.main_thread():
        return None
    pressed = Pressed()
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        signal.signal(signal.SIGINT, pressed)
    if signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:
        signal.signal(signal.SIGTERM, pressed)
    return pressed


def _run() -> None:
    try:
        from .cli import entrypoint as run
    except KeyboardInterrupt:
        sys.stderr.write("archfleet: error: interrupted\n")
        sys.exit(130)
    run()
