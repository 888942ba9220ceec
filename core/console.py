"""The console script (pyproject.toml's ``archfleet``): :func:`archfleet.cli.entrypoint`, with
the cyclic garbage collector off while archfleet's modules load.

Loading what a build needs makes some 100,000 objects and next to no garbage; the collector,
run by allocation counts, spent ~8 ms of the ~100 ms that loading takes looking through them
(issue 17: ``import archfleet.cli, archfleet.pipeline, httpx``, median of 6, 105 -> 97 ms). The
command turns it back on when its run starts (:func:`archfleet.cli._run`), after freezing what
the imports made."""

import gc


def entrypoint() -> None:
    """Run the ``archfleet`` command line; exits with its code."""
    gc.disable()
    from .cli import entrypoint as run

    run()
