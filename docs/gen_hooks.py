"""Writes docs/hooks.md from the docstrings in archfleet.hookspecs (run: python docs/gen_hooks.py).
A test fails when the page and the docstrings disagree, so the reference never drifts."""

import inspect
import sys
from pathlib import Path

from archfleet import hookspecs

OUT = Path(__file__).with_name("hooks.md")
ORDER = ["archfleet_add_nodes", "archfleet_probe", "archfleet_prepare", "archfleet_offer", "archfleet_estimate",
         "archfleet_connect",
         "archfleet_run", "archfleet_build_finished", "archfleet_index_pushed", "archfleet_session_end"]


def render() -> str:
    lines = ["# Hook reference", "",
             "Generated from `archfleet/hookspecs.py` by `docs/gen_hooks.py`; the docstrings there are the source.",
             "", inspect.cleandoc(hookspecs.__doc__), ""]
    hooks = dict(inspect.getmembers(hookspecs, inspect.isfunction))
    for name in ORDER:
        fn = hooks[name]
        opts = getattr(fn, "archfleet_spec", {}) or {}
        first = " (firstresult)" if opts.get("firstresult") else ""
        sig = ", ".join(inspect.signature(fn).parameters)
        lines += [f"## `{name}({sig})`{first}", "", inspect.cleandoc(fn.__doc__ or ""), ""]
    return "\n".join(lines)


if __name__ == "__main__":
    OUT.write_text(render())
    sys.exit(0)
