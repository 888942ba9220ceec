#!/usr/bin/env python3
"""Mutation testing of archfleet's modules against the unit tests only.

    .venv/bin/python tests/mutation.py [--jobs N] [--resume | --retest] [--recheck-timeouts] [MODULE ...]

Not part of every CI run: a run of every module takes hours (docs/testing.md has the last figure,
the modules it covered and its run time). The modules are every ``core/*.py`` and every plugin,
``plugins/ssh/`` too (:func:`discover`); MODULE narrows the run to some of them, named as
archfleet imports them less the ``archfleet.`` (``buildargs``, ``plugins.estimates``,
``plugins.ssh.hostkeys``, ``plugins.ssh`` for its ``__init__.py``) or by path
(``core/buildargs.py``, ``plugins/ssh/hostkeys.py``).
``--resume`` goes on with a run that was stopped. ``--retest`` keeps the last run's mutants and results, copies the unit tests as they are now
into it and tests again only the mutants that were not killed: the quick check after adding a
test for a survivor (the source must not have changed since that run). Without MODULE, ``--retest``
and ``--resume`` go on with the modules of the last run.

mutmut (``pip install -e '.[mutation]'``) changes one thing at a time in these modules (an
operator, a constant, a condition, a call's argument) and runs the unit tests that reach the
changed function; a mutant is *killed* when some test fails. mutmut names a module after its
path, and this repository maps ``archfleet`` to ``core/`` (pyproject.toml ``package-dir``), so
the run happens in a staged copy under ``build/mutation/`` where ``core/`` is
``src/archfleet/`` and ``plugins/`` is ``src/archfleet/plugins/``; its configuration is
``[tool.mutmut]`` in pyproject.toml, narrowed in the staged copy to the run's modules
(``only_mutate``) and oracle (:func:`oracle`). In ``core/index.py`` only the pure functions
count (``FUNCTIONS`` below): the rest talks to a registry.

The oracle is the unit suite less the modules of ``TIMED_TESTS``, which test processes, files
and clocks with wall-clock bounds that fail on a machine busy with mutants (false kills); each
is left out only when no module it tests is in the run, so a run of ``leases`` or
``plugins.ssh.transport`` is judged by their own tests.

A *timeout* is a mutant that made its tests run past 15 times their usual time (mutmut's
``timeout_multiplier``): a loop that no longer ends, mostly; CI's own time limit would stop such a change, so it
counts as detected. On a busy machine a slow survivor can pass for one, so
``--recheck-timeouts`` runs each of them again with 30 times the usual time; with ``--retest``
in the same pass as the survivors. Prints, per module and in total: mutants, killed, timeouts,
survived, untested (no unit test reaches the function: a survivor too), % killed ((killed +
timeouts) / mutants). Every survivor's diff goes to ``build/mutation/survivors.txt``; the aim is
that each is either killed by a unit test that names the rule it checks or listed in
docs/testing.md with why it is equivalent (the last run's 101 are not listed yet). Exit status 0 when the run completed, whatever the score.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
STAGE = REPO / "build" / "mutation"
# module -> the only functions that count (a module not listed: all of them). Mutant names look
# like archfleet.index.x_assemble__mutmut_3 (a function), archfleet.platforms.xǁPlatformǁruns__mutmut_1
# (a method of Platform) or archfleet.plugins.ssh.hostkeys.x_check__mutmut_2 (a plugin's module;
# a package's __init__.py is the package: archfleet.plugins.ssh.x_...).
FUNCTIONS: dict[str, tuple[str, ...]] = {
    "index": ("_platform_of", "assemble"),
}
# unit test modules with wall-clock bounds -> the modules they test: left out of the oracle
# unless one of those modules is in the run (see the module docstring)
TIMED_TESTS: dict[str, tuple[str, ...]] = {
    "test_transport.py": ("transport", "plugins.ssh", "plugins.ssh.transport"),
    "test_leases.py": ("leases", "probe"),
    "test_node_cache.py": ("context",),
    "test_cache_files.py": ("cachedir", "cachefile", "history", "layercache", "linkrate", "probe", "scores",
                            "plugins.estimates"),
    "test_history.py": ("history",),
}


def discover() -> dict[str, Path]:
    """Every module that can be mutated: name (as imported, less ``archfleet.``) -> its path in
    the repository. ``core/__init__.py`` and ``plugins/__init__.py`` hold no code."""
    out: dict[str, Path] = {}
    for path in sorted(REPO.glob("core/*.py")):
        if path.name != "__init__.py":
            out[path.stem] = path
    for path in sorted(REPO.glob("plugins/**/*.py")):
        parts = path.relative_to(REPO).with_suffix("").parts  # ("plugins", "ssh", "hostkeys")
        if parts == ("plugins", "__init__"):
            continue
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


MODULES = discover()


def module_of(arg: str) -> str | None:
    """The module ``arg`` names (``buildargs``, ``plugins.ssh.hostkeys``, ``core/buildargs.py``,
    ``plugins/ssh/hostkeys.py``), or None."""
    if arg in MODULES:
        return arg
    try:
        path = (REPO / arg).resolve()
    except OSError:
        return None
    return next((m for m, p in MODULES.items() if p.resolve() == path), None)


def staged(module: str) -> Path:
    """Where ``module`` is in the staged layout (``src/archfleet/...``), relative to the stage."""
    rel = MODULES[module].relative_to(REPO)
    return Path("src", "archfleet", *rel.parts[1:]) if rel.parts[0] == "core" else Path("src", "archfleet", *rel.parts)


def oracle(modules: list[str]) -> list[str]:
    """mutmut's test selection for a run of ``modules``: the unit tests, less each timed module
    whose modules are all outside the run."""
    out = ["tests/unit"]
    for test, tested in TIMED_TESTS.items():
        if not set(tested) & set(modules):
            out.append(f"--ignore=tests/unit/{test}")
    return out
KILLED = {1, 3}
SURVIVED = {0}
UNTESTED = {5, 33}
TIMEOUT = {-24, 24, 152, 255, 36}
RECHECK_MULTIPLIER = 30.0  # twice the limit of the first pass


def stage(modules: list[str]) -> None:
    """A fresh copy of the repository in the layout mutmut expects (see the module docstring),
    configured to mutate ``modules`` only, against their oracle."""
    if STAGE.exists():
        shutil.rmtree(STAGE)
    src = STAGE / "src"
    src.mkdir(parents=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(REPO / "core", src / "archfleet", ignore=ignore)
    shutil.copytree(REPO / "plugins", src / "archfleet" / "plugins", ignore=ignore)
    # the whole of tests/ (a unit test reads tests/integration's list of Dockerfile shapes), and
    # core/ and plugins/ as they are, unmutated: unit tests read their source as text (every
    # public function has a docstring, plugins import only archfleet.api); nothing imports them
    shutil.copytree(REPO / "tests", STAGE / "tests", ignore=ignore)
    for name in ("examples", "docs", "core", "plugins"):
        shutil.copytree(REPO / name, STAGE / name, ignore=ignore)
    for name in ("README.md", "pyproject.toml"):
        shutil.copy2(REPO / name, STAGE / name)
    configure(STAGE / "pyproject.toml", "only_mutate", [staged(m).as_posix() for m in modules])
    configure(STAGE / "pyproject.toml", "pytest_add_cli_args_test_selection", oracle(modules))


def in_stage() -> list[str]:
    """The modules the staged run mutates (its ``only_mutate``); none without a stage."""
    import fnmatch
    import tomllib

    try:
        mutated = tomllib.loads((STAGE / "pyproject.toml").read_text())["tool"]["mutmut"]["only_mutate"]
    except (OSError, KeyError, tomllib.TOMLDecodeError):
        return []
    return [m for m in MODULES if any(fnmatch.fnmatch(staged(m).as_posix(), p) for p in mutated)]


def configure(path: Path, key: str, values: list[str]) -> None:
    """Set ``key`` of ``[tool.mutmut]`` in the pyproject.toml at ``path`` to the list ``values``
    (the key's whole array, as the repository's pyproject.toml writes it, one item a line)."""
    text = path.read_text()
    array = "[\n" + "".join(f'    "{v}",\n' for v in values) + "]"
    new, n = re.subn(rf"(?ms)^{key} = \[.*?^\]", lambda _: f"{key} = {array}", text)
    if n != 1:
        raise SystemExit(f"mutation: no {key} array in {path} to set")
    path.write_text(new)


def patterns(modules: list[str]) -> list[str]:
    out = []
    for module in modules:
        functions = FUNCTIONS.get(module)
        if functions is None:
            out.append(f"archfleet.{module}.*")
        else:
            out += [f"archfleet.{module}.x_{f}__mutmut_*" for f in functions]
    return out


def run_mutmut(*args: str, env: dict | None = None, log: Path) -> int:
    """Run mutmut in the stage with the venv's interpreter, nice'd; its progress goes to ``log``."""
    exe = Path(sys.executable).with_name("mutmut")
    with open(log, "a") as out:
        return subprocess.run(["nice", "-n", "10", str(exe), *args], cwd=STAGE, stdout=out, stderr=subprocess.STDOUT,
                              env={**os.environ, **(env or {})}).returncode


def results() -> dict[str, int | None]:
    """Every mutant's exit code, from mutmut's files in the stage."""
    out: dict[str, int | None] = {}
    for meta in (STAGE / "mutants" / "src" / "archfleet").rglob("*.py.meta"):
        out.update(json.loads(meta.read_text())["exit_code_by_key"])
    return out


def counted(name: str, modules: list[str]) -> str | None:
    """The module a mutant counts for, or None when it is outside the run."""
    m = re.fullmatch(r"archfleet\.([\w.]+?)\.(?:x_(\w+?)|xǁ\w+ǁ(\w+?))__mutmut_\d+", name)
    if not m or m.group(1) not in modules:
        return None
    functions = FUNCTIONS.get(m.group(1))
    if functions is not None and m.group(2) not in functions:
        return None
    return m.group(1)


def set_timeout_multiplier(value: float) -> None:
    """Set [tool.mutmut] timeout_multiplier in the staged pyproject.toml (both copies mutmut reads)."""
    for path in (STAGE / "pyproject.toml", STAGE / "mutants" / "pyproject.toml"):
        text = path.read_text()
        path.write_text(re.sub(r"(?m)^timeout_multiplier = .*$", f"timeout_multiplier = {value}", text))


def show(names: list[str]) -> str:
    """Each mutant's diff, as ``mutmut show`` prints it."""
    exe = Path(sys.executable).with_name("mutmut")
    parts = []
    for name in names:
        proc = subprocess.run([str(exe), "show", name], cwd=STAGE, capture_output=True, text=True)
        parts.append(proc.stdout.strip() or f"# {name}: (no diff: {proc.stderr.strip()[-200:]})")
    return "\n\n".join(parts) + "\n"


def table(codes: dict[str, int | None], modules: list[str]) -> tuple[list[str], list[str]]:
    """The lines to print and the survivors' names."""
    rows: dict[str, collections.Counter] = {m: collections.Counter() for m in modules}
    survivors = []
    for name, code in codes.items():
        module = counted(name, modules)
        if module is None:
            continue
        kind = ("killed" if code in KILLED else "timeout" if code in TIMEOUT else "survived" if code in SURVIVED
                else "untested" if code in UNTESTED else "other")
        rows[module][kind] += 1
        rows[module]["mutants"] += 1
        if kind in ("survived", "untested", "other"):
            survivors.append(name)
    total = sum(rows.values(), collections.Counter())
    width = max(12, *(len(m) for m in rows))
    head = (f"{'module':<{width}} {'mutants':>7} {'killed':>7} {'timeout':>7} {'survived':>8} {'untested':>8} "
            f"{'other':>5} {'% killed':>8}")
    lines = [head]
    for module, c in [*rows.items(), ("total", total)]:
        score = 100 * (c["killed"] + c["timeout"]) / c["mutants"] if c["mutants"] else 0.0
        lines.append(f"{module:<{width}} {c['mutants']:>7} {c['killed']:>7} {c['timeout']:>7} {c['survived']:>8} "
                     f"{c['untested']:>8} {c['other']:>5} {score:>7.1f}%")
    return lines, sorted(survivors)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("modules", nargs="*", metavar="MODULE",
                        help="some of the modules (default: all): buildargs, plugins.ssh.hostkeys, core/linkrate.py, ...")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 2, help="mutants tested at once")
    parser.add_argument("--resume", action="store_true", help="go on with the last run where it stopped")
    parser.add_argument("--retest", action="store_true",
                        help="test the last run's surviving mutants again against the current unit tests")
    parser.add_argument("--recheck-timeouts", action="store_true",
                        help=f"run the timed-out mutants again with {RECHECK_MULTIPLIER:g}x their usual time")
    args = parser.parse_args()
    unknown = [m for m in args.modules if module_of(m) is None]
    if unknown:
        parser.error(f"unknown module {unknown[0]!r} (known: {', '.join(MODULES)})")
    if args.modules:
        modules = list(dict.fromkeys(module_of(m) for m in args.modules))
    elif (args.retest or args.resume) and in_stage():
        modules = in_stage()  # go on with the last run's modules
    else:
        modules = list(MODULES)
    try:
        import mutmut  # noqa: F401
    except ImportError:
        print("mutation: mutmut is not installed: .venv/bin/pip install -e '.[mutation]'", file=sys.stderr)
        return 2
    started = time.monotonic()
    log = STAGE / "mutmut.log"
    if args.retest:
        if not (STAGE / "mutants").is_dir():
            print("mutation: --retest needs an earlier run in build/mutation", file=sys.stderr)
            return 2
        missing = [m for m in modules if m not in in_stage()]
        changed = [m for m in modules if m not in missing
                   and MODULES[m].read_bytes() != (STAGE / staged(m)).read_bytes()]
        if missing or changed:
            what = "is not in" if missing else "changed since"
            print(f"mutation: --retest: {MODULES[(missing or changed)[0]].relative_to(REPO)} {what} that run; "
                  "run without --retest", file=sys.stderr)
            return 2
        again = sorted(n for n, c in results().items() if c not in KILLED | TIMEOUT and counted(n, modules))
        if args.recheck_timeouts:
            again += sorted(n for n, c in results().items() if c in TIMEOUT and counted(n, modules))
            set_timeout_multiplier(RECHECK_MULTIPLIER)
        ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
        shutil.copytree(REPO / "tests", STAGE / "tests", ignore=ignore, dirs_exist_ok=True)
        print(f"mutation: --retest: {len(again)} mutants not killed last time, against the unit tests as they are now "
              f"(progress: {log})", flush=True)
        targets = again
    elif args.resume and (STAGE / "mutants").is_dir():
        # mutmut runs every mutant it is given by name again, so name only those without a result
        targets = sorted(n for n, c in results().items() if c is None and counted(n, modules))
        print(f"mutation: resuming: {len(targets)} mutants not tested yet (progress: {log})", flush=True)
    else:
        stage(modules)
        print(f"mutation: mutmut {mutmut.__version__} on {', '.join(modules)} in {STAGE} (progress: {log})",
              flush=True)
        targets = patterns(modules)
    if targets and run_mutmut("run", "--max-children", str(args.jobs), *targets, log=log) != 0:
        print(f"mutation: mutmut failed, see {log}", file=sys.stderr)
        return 1
    first = time.monotonic() - started
    timed_out = sorted(n for n, c in results().items() if c in TIMEOUT and counted(n, modules))
    if timed_out and args.recheck_timeouts and not args.retest:
        print(f"mutation: {len(timed_out)} timeouts again with {RECHECK_MULTIPLIER:g}x their usual time", flush=True)
        set_timeout_multiplier(RECHECK_MULTIPLIER)
        if run_mutmut("run", "--max-children", str(args.jobs), *timed_out, log=log) != 0:
            print(f"mutation: the re-run of the timeouts failed, see {log}", file=sys.stderr)
            return 1
    lines, survivors = table(results(), modules)
    (STAGE / "survivors.txt").write_text(show(survivors) if survivors else "")
    elapsed = time.monotonic() - started
    for line in lines:
        print(f"mutation: {line}")
    print(f"mutation: {len(survivors)} survivors (diffs in {STAGE / 'survivors.txt'}); run time {elapsed / 60:.1f} min "
          f"({first / 60:.1f} min mutmut's pass) with {args.jobs} jobs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
