import asyncio
from pathlib import Path

import pytest

from archfleet import hookimpl
from archfleet.errors import ArchfleetError, UsageError
from archfleet.model import BuildRequest, NodeFacts, NodeSpec, Option
from archfleet.pipeline import offers
from archfleet.platforms import parse
from archfleet.manager import make_hooks

ARM = parse("linux/arm64")
HERE = Path(__file__).parent
REQ = BuildRequest(HERE.parent.parent / "examples" / "arch-test", HERE.parent.parent / "examples" / "arch-test" / "Dockerfile",
                   [ARM])
FACTS = {"n1": NodeFacts(NodeSpec("n1", transport="test"), True, native=[ARM], builder="buildkit", engine_cli=["docker"])}


def test_builtins_are_registered_as_plugins():
    pm = make_hooks(load_entrypoints=False).pm
    assert {"local", "ssh", "native", "qemu", "cross", "estimates"} == {pm.get_name(p) for p in pm.get_plugins()}


def test_disable_plugins_by_name(monkeypatch):
    monkeypatch.setenv("ARCHFLEET_DISABLE_PLUGINS", "qemu")
    pm = make_hooks(load_entrypoints=False).pm
    assert "qemu" not in {pm.get_name(p) for p in pm.get_plugins()}


def test_outside_strategy_offers_beside_builtins():
    class Cloud:
        @hookimpl
        def archfleet_offer(self, platform, request, facts):
            return [Option(platform, "cloud", "n1", 1.0, why="a cloud runner")]

    hooks = make_hooks(load_entrypoints=False)
    hooks.register(Cloud(), name="cloud")
    got = asyncio.run(offers(hooks, REQ, FACTS))
    assert {o.strategy for o in got} == {"native", "cloud"}


def test_plugin_that_raises_is_named():
    class Broken:
        @hookimpl
        def archfleet_offer(self, platform, request, facts):
            raise RuntimeError("boom")

    hooks = make_hooks(load_entrypoints=False)
    hooks.register(Broken(), name="broken-plugin")
    with pytest.raises(ArchfleetError, match="'broken-plugin' failed in archfleet_offer: RuntimeError: boom"):
        asyncio.run(offers(hooks, REQ, FACTS))


def test_plugin_returning_wrong_type_is_named():
    class Wrong:
        @hookimpl
        def archfleet_offer(self, platform, request, facts):
            return ["not an option"]

    hooks = make_hooks(load_entrypoints=False)
    hooks.register(Wrong(), name="wrong")
    with pytest.raises(ArchfleetError, match="plugin 'wrong' offered"):
        asyncio.run(offers(hooks, REQ, FACTS))


def test_a_plugin_implementing_an_unknown_hook_is_one_usage_line_naming_it():
    class Typo:
        @hookimpl
        def archfleet_ofer(self, platform):
            return []

    hooks = make_hooks(load_entrypoints=False)
    with pytest.raises(UsageError) as info:
        hooks.register(Typo(), name="typo")
    assert str(info.value).startswith("plugin 'typo' implements a hook archfleet does not have: ")
    assert "archfleet_ofer" in str(info.value) and "\n" not in str(info.value)


def test_every_hook_is_documented():
    from archfleet import hookspecs

    for name in dir(hookspecs):
        if name.startswith("archfleet_"):
            doc = getattr(hookspecs, name).__doc__ or ""
            assert len(doc.split()) > 10, name


def test_builtin_plugins_use_only_the_public_api():
    import ast

    plugins = Path(__file__).resolve().parents[2] / "plugins"
    for path in plugins.rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("archfleet"):
                assert node.module == "archfleet.api", f"{path.name} imports {node.module}"
            if isinstance(node, ast.Import):
                assert not any(a.name.startswith("archfleet") for a in node.names), path.name


def test_the_api_exports_what_plugins_use_and_the_hook_types_no_more():
    """Rule (archfleet.api's docstring): the public API is what the built-in plugins and the two
    examples import, plus the types hooks receive or return and the errors a hook raises."""
    import ast

    from archfleet import api

    repo = Path(__file__).resolve().parents[2]
    files = [*(repo / "plugins").rglob("*.py"), repo / "docs" / "examples" / "fast_pool.py",
             repo / "examples" / "plugins" / "archfleet-reuse" / "archfleet_reuse.py"]
    used = set()
    for path in files:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module == "archfleet.api":
                used.update(a.name for a in node.names)
    hook_types = {"Platform", "NodeSpec", "NodeFacts", "Option", "BuildRequest", "PlatformResult", "Config", "Job",
                  "Transport", "Key", "InfrastructureError", "BuildFailed"}
    assert used <= set(api.__all__)
    assert set(api.__all__) - used <= hook_types, set(api.__all__) - used - hook_types


def test_every_public_function_and_class_has_a_docstring():
    """Rule (the brief's style): every public function, class and method of core/ and plugins/
    says in a docstring what it takes, gives and raises (hook implementations are documented in
    hookspecs.py instead)."""
    import ast

    repo = Path(__file__).resolve().parents[2]
    missing = []
    for path in sorted([*(repo / "core").glob("*.py"), *(repo / "plugins").rglob("*.py")]):
        tree = ast.parse(path.read_text())
        for node in tree.body:
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) or node.name.startswith("_"):
                continue
            if not (path.parts[-2] != "core" and node.name.startswith("archfleet_")) and not ast.get_docstring(node):
                missing.append(f"{path.name}:{node.lineno} {node.name}")
            if isinstance(node, ast.ClassDef):
                missing += [f"{path.name}:{m.lineno} {node.name}.{m.name}" for m in node.body
                            if isinstance(m, (ast.FunctionDef, ast.AsyncFunctionDef)) and not m.name.startswith("_")
                            and not ast.get_docstring(m)]
    assert missing == []
