#!/usr/bin/env python3
"""Mutation testing of the modules whose rules are pure, against the unit tests only.

    .venv/bin/python tests/mutation.py [--jobs N] [--resume | --retest] [--recheck-timeouts] [MODULE ...]

Not part of every CI run: it takes tens of minutes (docs/testing.md has the last figure and its
run time). MODULE narrows the run to some of the modules below (``platforms``, ``index``, ...).
``--resume`` goes on with a run that was stopped. ``--retest`` keeps the last run's mutants and results, copies the unit tests as they are now
into it and tests again only the mutants that were not killed: the quick check after adding a
test for a survivor (the source must not have changed since that run).

mutmut (``pip install -e '.[mutation]'``) changes one thing at a time in these modules (an
operator, a constant, a condition, a call's argument) and runs the unit tests that reach the
changed function; a mutant is *killed* when some test fails. mutmut names a module after its
path, and this repository maps ``archfleet`` to ``core/`` (pyproject.toml ``package-dir``), so
the run happens in a staged copy under ``build/mutation/`` where ``core/`` is
``src/archfleet/`` and ``plugins/`` is ``src/archfleet/plugins/``; its configuration is
``[tool.mutmut]`` in pyproject.toml. In ``core/index.py`` only the pure functions count
(``FUNCTIONS`` below): the rest talks to a registry.

A *timeout* is a mutant that made its tests run past 15 times their usual time (mutmut's
``timeout_multiplier``): a loop that no longer ends, mostly; CI's own time limit would stop such a change, so it
counts as detected. On a busy machine a slow survivor can pass for one, so
``--recheck-timeouts`` runs each of them again with 30 times the usual time; with ``--retest``
in the same pass as the survivors. Prints, per module and in total: mutants, killed, timeouts,
survived, untested (no unit test reaches the function: a survivor too), % killed ((killed +
timeouts) / mutants). Every survivor's diff goes to ``build/mutation/survivors.txt``; each is
either killed by a unit test that names the rule it checks or listed in docs/testing.md with why
it is equivalent. Exit status 0 when the run completed, whatever the score.
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
# module -> the functions that count (None: all of them). Mutant names look like
# archfleet.index.x_assemble__mutmut_3 (a function) or archfleet.platforms.xǁPlatformǁruns__mutmut_1
# (a method of Platform).
MODULES: dict[str, tuple[str, ...] | None] = {
    "platforms": None,
    "reference": None,
    "index": ("_platform_of", "assemble"),
    "dockerfile": None,
    "shellword": None,
    "planner": None,
    "inventory": None,
}
KILLED = {1, 3}
SURVIVED = {0}
UNTESTED = {5, 33}
TIMEOUT = {-24, 24, 152, 255, 36}
RECHECK_MULTIPLIER = 30.0  # twice the limit of the first pass


def stage() -> None:
    """A fresh copy of the repository in the layout mutmut expects (see the module docstring)."""
    if STAGE.exists():
        shutil.rmtree(STAGE)
    src = STAGE / "src"
    src.mkdir(parents=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(REPO / "core", src / "archfleet", ignore=ignore)
    shutil.copytree(REPO / "plugins", src / "archfleet" / "plugins", ignore=ignore)
    (STAGE / "tests").mkdir()
    shutil.copy2(REPO / "tests" / "conftest.py", STAGE / "tests" / "conftest.py")
    shutil.copytree(REPO / "tests" / "unit", STAGE / "tests" / "unit", ignore=ignore)
    for name in ("examples", "docs"):
        shutil.copytree(REPO / name, STAGE / name, ignore=ignore)
    for name in ("README.md", "pyproject.toml"):
        shutil.copy2(REPO / name, STAGE / name)


def patterns(modules: list[str]) -> list[str]:
    out = []
    for module in modules:
        functions = MODULES[module]
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
    for meta in (STAGE / "mutants" / "src" / "archfleet").glob("*.py.meta"):
        out.update(json.loads(meta.read_text())["exit_code_by_key"])
    return out


def counted(name: str, modules: list[str]) -> str | None:
    """The module a mutant counts for, or None when it is outside the run."""
    m = re.fullmatch(r"archfleet\.(\w+)\.(?:x_(\w+?)|xǁ\w+ǁ(\w+?))__mutmut_\d+", name)
    if not m or m.group(1) not in modules:
        return None
    functions = MODULES[m.group(1)]
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
    head = f"{'module':<12} {'mutants':>7} {'killed':>7} {'timeout':>7} {'survived':>8} {'untested':>8} {'other':>5} {'% killed':>8}"
    lines = [head]
    for module, c in [*rows.items(), ("total", total)]:
        score = 100 * (c["killed"] + c["timeout"]) / c["mutants"] if c["mutants"] else 0.0
        lines.append(f"{module:<12} {c['mutants']:>7} {c['killed']:>7} {c['timeout']:>7} {c['survived']:>8} "
                     f"{c['untested']:>8} {c['other']:>5} {score:>7.1f}%")
    return lines, sorted(survivors)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("modules", nargs="*", metavar="MODULE", help=f"some of: {' '.join(MODULES)}")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 2, help="mutants tested at once")
    parser.add_argument("--resume", action="store_true", help="go on with the last run where it stopped")
    parser.add_argument("--retest", action="store_true",
                        help="test the last run's surviving mutants again against the current unit tests")
    parser.add_argument("--recheck-timeouts", action="store_true",
                        help=f"run the timed-out mutants again with {RECHECK_MULTIPLIER:g}x their usual time")
    args = parser.parse_args()
    unknown = [m for m in args.modules if m not in MODULES]
    if unknown:
        parser.error(f"unknown module {unknown[0]!r} (known: {', '.join(MODULES)})")
    modules = list(args.modules or MODULES)
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
        changed = [m for m in modules if (REPO / "core" / f"{m}.py").read_bytes()
                   != (STAGE / "src" / "archfleet" / f"{m}.py").read_bytes()]
        if changed:
            print(f"mutation: --retest: core/{changed[0]}.py changed since that run; run without --retest",
                  file=sys.stderr)
            return 2
        again = sorted(n for n, c in results().items() if c not in KILLED | TIMEOUT and counted(n, modules))
        if args.recheck_timeouts:
            again += sorted(n for n, c in results().items() if c in TIMEOUT and counted(n, modules))
            set_timeout_multiplier(RECHECK_MULTIPLIER)
        ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
        shutil.copytree(REPO / "tests" / "unit", STAGE / "tests" / "unit", ignore=ignore, dirs_exist_ok=True)
        shutil.copy2(REPO / "tests" / "conftest.py", STAGE / "tests" / "conftest.py")
        print(f"mutation: --retest: {len(again)} mutants not killed last time, against the unit tests as they are now "
              f"(progress: {log})", flush=True)
        targets = again
    elif args.resume and (STAGE / "mutants").is_dir():
        # mutmut runs every mutant it is given by name again, so name only those without a result
        targets = sorted(n for n, c in results().items() if c is None and counted(n, modules))
        print(f"mutation: resuming: {len(targets)} mutants not tested yet (progress: {log})", flush=True)
    else:
        stage()
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
