"""archfleet: build one container image for many CPU platforms and publish it under one tag.

``hookimpl`` (the marker for plugin hooks, :mod:`archfleet.hookspecs`) loads pluggy when first
asked for: the console script (:mod:`archfleet.console`) puts its own SIGINT handler in place
before anything else loads, so that a Ctrl-C in the first milliseconds is its one line."""

__all__ = ["hookimpl"]
__version__ = "0.1.0"


def __getattr__(name: str):
    if name == "hookimpl":
        from .hookspecs import hookimpl

        return hookimpl
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
