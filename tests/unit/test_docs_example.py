"""The docs' plugin example is real code: this test runs exactly the file the page includes."""

import asyncio
import importlib.util
import sys
from pathlib import Path

from archfleet.model import BuildRequest, NodeFacts, NodeSpec
from archfleet.pipeline import offers
from archfleet.planner import schedule
from archfleet.platforms import parse
from archfleet.manager import make_hooks

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "docs" / "examples" / "fast_pool.py"


def load_example():
    spec = importlib.util.spec_from_file_location("fast_pool", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_page_includes_the_file_and_it_is_30_lines_at_most():
    page = (REPO / "docs" / "plugins.md").read_text()
    assert '--8<-- "docs/examples/fast_pool.py"' in page
    assert len(EXAMPLE.read_text().splitlines()) <= 30


def test_the_example_plugin_offers_and_wins_on_fast_nodes():
    hooks = make_hooks(load_entrypoints=False)
    hooks.register(load_example(), name="fast-pool")
    amd = parse("linux/amd64")
    ctx = REPO / "examples" / "arch-test"
    request = BuildRequest(ctx, ctx / "Dockerfile", [amd])
    facts = {
        "fast": NodeFacts(NodeSpec("fast", transport="test", labels={"pool": "fast"}), True, native=[amd],
                          builder="buildkit", engine_cli=["docker"], cpus=2, score=1.0),
        "slow": NodeFacts(NodeSpec("slow", transport="test"), True, native=[amd], builder="buildkit",
                          engine_cli=["docker"], cpus=2, score=1.0),
    }
    options = asyncio.run(offers(hooks, request, facts))
    mine = [o for o in options if o.strategy == "fast-pool"]
    assert [o.node for o in mine] == ["fast"]
    plan = schedule([amd], options, {"fast": 1, "slow": 1})
    assert str(plan.option_for(amd)) == "fast-pool@fast"


def test_hook_reference_is_generated_from_the_docstrings():
    sys.path.insert(0, str(REPO / "docs"))
    try:
        import gen_hooks
    finally:
        sys.path.pop(0)
    assert (REPO / "docs" / "hooks.md").read_text() == gen_hooks.render(), "run: python docs/gen_hooks.py"
