import asyncio
from pathlib import Path

import pluggy
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


def test_all_seven_builtins_are_registered_as_plugins():
    """README "Layout": built-in plugins local, ssh, native, qemu, cross, reuse, estimates; nothing
    else is registered without entry points."""
    from archfleet.manager import BUILTIN_PLUGINS

    pm = make_hooks(load_entrypoints=False).pm
    names = {pm.get_name(p) for p in pm.get_plugins()}
    assert names == {"local", "ssh", "native", "qemu", "cross", "reuse", "estimates"}
    assert names == {d.rsplit(".", 1)[-1] for d in BUILTIN_PLUGINS}


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


class Typo:
    @hookimpl
    def archfleet_ofer(self, platform):
        return []

    @hookimpl
    def archfleet_estimat(self, option):
        return None


@pytest.fixture
def installed(monkeypatch):
    """Entry-point loading replaced: ``installed.plugins`` ({name: object}) is what is installed.
    A manager made in the test loads them."""
    state = type("Installed", (), {"plugins": {}})()

    def load(self, group, name=None):
        for ep_name, obj in state.plugins.items():
            if self.is_blocked(ep_name):  # as pluggy skips a blocked entry point
                continue
            if isinstance(obj, Exception):
                raise obj
            self.register(obj, name=ep_name)
        return len(state.plugins)

    monkeypatch.setattr(pluggy.PluginManager, "load_setuptools_entrypoints", load)
    monkeypatch.delenv("ARCHFLEET_DISABLE_PLUGINS", raising=False)
    return state


def test_an_installed_plugin_with_an_unknown_hook_is_archfleets_one_line_usage_error(installed):
    """docs/plugins.md: a plugin implementing a hook archfleet does not have is named in a
    one-line error. archfleet's own UsageError (exit 2), naming the plugin as installed and every
    unknown hook, not pluggy's PluginValidationError with an object's repr."""
    installed.plugins["typo"] = Typo()
    with pytest.raises(UsageError) as err:
        make_hooks()
    assert str(err.value) == ("plugin 'typo' implements archfleet_estimat, archfleet_ofer, which archfleet does not "
                              "have (see its hook reference, or disable it with ARCHFLEET_DISABLE_PLUGINS)")
    assert err.value.exit_code == 2


def test_the_command_line_says_it_in_one_line_and_disabling_the_plugin_helps(installed, capsys, monkeypatch):
    from archfleet import cli

    installed.plugins["typo"] = Typo()
    assert cli.main(["plugins"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.splitlines() == [
        "archfleet: error: plugin 'typo' implements archfleet_estimat, archfleet_ofer, which archfleet does not have "
        "(see its hook reference, or disable it with ARCHFLEET_DISABLE_PLUGINS)"]
    monkeypatch.setenv("ARCHFLEET_DISABLE_PLUGINS", "typo")
    assert cli.main(["plugins"]) == 0
    assert capsys.readouterr().out.rstrip().endswith("disabled: typo")


def test_an_installed_plugin_that_fails_to_load_is_one_line(installed, capsys):
    from archfleet import cli

    installed.plugins["broken"] = ImportError("No module named 'fast_pool'\n(from the entry point)")
    assert cli.main(["plugins"]) == 2
    assert capsys.readouterr().err.splitlines() == [
        "archfleet: error: an installed archfleet plugin failed to load: No module named 'fast_pool'\\n"
        "(from the entry point)"]


def test_an_optional_hook_archfleet_does_not_have_is_accepted(installed):
    class Later:
        @hookimpl(optionalhook=True)
        def archfleet_future_hook(self):
            return None

    installed.plugins["later"] = Later()
    assert "later" in {pm_name for pm_name, _ in make_hooks().pm.list_name_plugin()}


def test_every_hook_documents_its_arguments_and_its_return():
    """Each hook's docstring names every argument (as ``name``) and says what to return (or
    that the return value is ignored): the hook reference is generated from them."""
    import inspect
    import re

    from archfleet import hookspecs

    hooks = {n: f for n, f in inspect.getmembers(hookspecs, inspect.isfunction) if n.startswith("archfleet_")}
    assert len(hooks) == 11
    for name, fn in hooks.items():
        doc = fn.__doc__ or ""
        for arg in inspect.signature(fn).parameters:
            assert f"``{arg}``" in doc, f"{name}: argument {arg} is not documented"
        assert re.search(r"\breturn", doc, re.IGNORECASE), f"{name}: the docstring does not say what to return"


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
    """Rule (archfleet.api's docstring): the public API is what the built-in plugins and the
    documentation's example import, plus the types hooks receive or return and the errors a hook raises."""
    import ast

    from archfleet import api

    repo = Path(__file__).resolve().parents[2]
    files = [*(repo / "plugins").rglob("*.py"), repo / "docs" / "examples" / "fast_pool.py"]
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


def test_test_modules_have_unique_basenames():
    """pytest imports tests/unit and tests/integration into one namespace (rootdir conftest, no
    __init__.py): two modules with one basename stop the whole run at collection."""
    from collections import Counter

    tests = Path(__file__).resolve().parents[1]
    names = Counter(p.name for p in tests.rglob("test_*.py"))
    assert [n for n, k in names.items() if k > 1] == []
