"""archfleet: build one container image for many CPU platforms and publish it under one tag."""

from .hookspecs import hookimpl

__all__ = ["hookimpl"]
__version__ = "0.1.0"
