"""The console script (pyproject.toml's ``archfleet``): :func:`archfleet.cli.entrypoint`, with
the cyclic garbage collector off while archfleet's modules load.

Loading what a build needs makes some 100,000 objects and next to no garbage; the collector,
run by allocation counts, spent ~8 ms of the ~100 ms that loading takes looking through them
(issue 17: ``import archfleet.cli, archfleet.pipeline, httpx``, median of 6, 105 -> 97 ms). The
command turns it back on when its run starts (:func:`archfleet.cli._run`), after freezing what
the imports made."""

import gc
import sys


def entrypoint() -> None:
    """Run the ``archfleet`` command line; exits with its code. A Ctrl-C while the modules
    load (the first ~80 ms) is the one line and exit 130 it is later, not a traceback."""
    gc.disable()
    try:
        from .cli import entrypoint as run
    except KeyboardInterrupt:
        sys.stderr.write("archfleet: error: interrupted\n")
        sys.exit(130)
    run()
