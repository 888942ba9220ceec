"""The ``archfleet`` command. Flags follow ``docker buildx build`` where the meaning is the same.

Every failure a person can cause or fix is one line on stderr and a documented exit code
(see :mod:`archfleet.errors`); ``ARCHFLEET_DEBUG=1`` adds the traceback.
"""

from __future__ import annotations

import asyncio
import json
import os
import platform as _platform
import sys
from pathlib import Path

import click

from . import platforms as plat
from .errors import ArchfleetError, UsageError
from .inventory import Config
from .model import BuildRequest
from .planner import parse_pins
from .reference import parse_reference


def _fail_param(param: str, message: str) -> UsageError:
    return UsageError(f"{param}: {message}")


def _request_from(path, platform, tag, file, build_arg, label, target, push, no_cache, pull, progress,
                  metadata_file, insecure_registry, allow_partial, engine_cli, pins=(), report=None) -> BuildRequest:
    context = Path(path)
    if not context.exists():
        raise _fail_param("PATH", f"build context {path!r} does not exist")
    if not context.is_dir():
        raise _fail_param("PATH", f"build context {path!r} is not a directory")
    dockerfile = Path(file) if file else context / "Dockerfile"
    if not dockerfile.is_file():
        raise _fail_param("--file", f"Dockerfile {str(dockerfile)!r} not found"
                          + ("" if file else "; name it with -f"))
    try:
        platforms = plat.parse_list(list(platform)) if platform else (plat.from_uname(_platform.machine()),)
    except plat.PlatformError as exc:
        raise _fail_param("--platform", str(exc)) from None
    if not platforms:
        raise _fail_param("--platform", "no platform given")
    for t in tag:
        parse_reference(t, what="--tag")
    args: dict[str, str] = {}  # like docker: a later value for the same name wins
    from_env: set[str] = set()
    for item in build_arg:
        key, eq, value = item.partition("=")
        if not key or not key.replace("_", "a").isalnum() or key[0].isdigit():
            raise _fail_param("--build-arg", f"{item!r} is not NAME=VALUE")
        if not eq:
            if key not in os.environ:
                continue  # like docker: a bare NAME takes its value from the environment, if set
            value = os.environ[key]
            from_env.add(key)  # and reaches the engine CLI in its environment, never in argv
        else:
            from_env.discard(key)
        args[key] = value
    labels = []
    for item in label:
        key, eq, value = item.partition("=")
        if not key or not eq:
            raise _fail_param("--label", f"{item!r} is not KEY=VALUE")
        labels.append((key, value))
    if metadata_file:
        parent = Path(metadata_file).resolve().parent
        if not parent.is_dir():
            raise _fail_param("--metadata-file", f"directory {str(parent)!r} does not exist")
    if report and not Path(report).resolve().parent.is_dir():
        raise _fail_param("--report", f"directory {str(Path(report).resolve().parent)!r} does not exist")
    return BuildRequest(
        context=context.resolve(), dockerfile=dockerfile.resolve(), platforms=platforms, tags=tuple(tag),
        build_args=list(args.items()), env_build_args=tuple(k for k in args if k in from_env),
        labels=labels, target=target, push=push, no_cache=no_cache, pull=pull, progress=progress,
        metadata_file=Path(metadata_file) if metadata_file else None,
        insecure_registries=tuple(insecure_registry), allow_partial=allow_partial, engine_cli=engine_cli,
        pins=tuple(pins),
    )


def build_options(fn):
    """The flags ``build`` and ``plan`` share (a plan is a build that stops before running)."""
    opts = [
        click.argument("path", default=".", required=False),
        click.option("--platform", multiple=True, help="Target platforms, comma-separated or repeated (linux/arm64,...)."),
        click.option("-t", "--tag", multiple=True, help="Name and tag (registry/repo:tag); repeatable."),
        click.option("-f", "--file", help="Dockerfile (default: PATH/Dockerfile)."),
        click.option("--build-arg", multiple=True, help="Build-time variable NAME=VALUE; repeatable."),
        click.option("--label", multiple=True, help="Image label KEY=VALUE; repeatable."),
        click.option("--target", help="Build stage to build."),
        click.option("--push", is_flag=True, help="Push the per-platform images and the index to the tags."),
        click.option("--no-cache", is_flag=True, help="Do not use the build cache."),
        click.option("--pull/--no-pull", default=True, show_default=True,
                     help="Resolve base images in their registry rather than the engine's image store."),
        click.option("--progress", type=click.Choice(["auto", "plain", "tty", "quiet"]), default="auto",
                     show_default=True, help="Progress output."),
        click.option("-q", "--quiet", is_flag=True, help="Print only the index digest (or image ids)."),
        click.option("--metadata-file", type=click.Path(dir_okay=False), help="Write build results as JSON here."),
        click.option("--report", type=click.Path(dir_okay=False), metavar="FILE.html",
                     help="Write a self-contained HTML report: timeline per node, planned vs actual."),
        click.option("--insecure-registry", multiple=True, metavar="HOST[:PORT]",
                     help="Allow plain HTTP to this registry (loopback registries always are)."),
        click.option("--allow-partial", is_flag=True, help="Push an index of the platforms that succeeded."),
        click.option("--engine-cli", envvar="ARCHFLEET_ENGINE_CLI", metavar="PATH",
                     help="Engine CLI for the local node (needs buildx or built-in BuildKit). "
                          "Default: the first docker on PATH that can, then /usr/bin/docker."),
        click.option("--local/--no-local", default=True, help="Use the local engine as a build node."),
        click.option("--nodes", "nodes_file", metavar="FILE", help="nodes.toml to use (default: $ARCHFLEET_NODES, "
                     "./nodes.toml, then ~/.config/archfleet/nodes.toml)."),
        click.option("--strategy", "pin_strategy", multiple=True, metavar="[PLATFORM=]STRATEGY",
                     help="Only this strategy (native, qemu, cross, ...), for all or one platform."),
        click.option("--node", "pin_node", multiple=True, metavar="[PLATFORM=][STRATEGY@]NODE",
                     help="Only this node, for all or one platform: linux/arm64=native@pi4."),
    ]
    for opt in reversed(opts):
        fn = opt(fn)
    return fn


def _config(nodes, engine_cli, local) -> Config:
    from .inventory import make_config

    return make_config(nodes=nodes, engine_cli=engine_cli, local=local)


def _run(pm, coro):
    from .pipeline import run_command

    return asyncio.run(run_command(pm, coro))


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="archfleet")
def cli():
    """Build one container image for many CPU platforms and publish it under one tag."""


@cli.command()
@build_options
def build(path, platform, tag, file, build_arg, label, target, push, no_cache, pull, progress, quiet, metadata_file,
          report, insecure_registry, allow_partial, engine_cli, local, nodes_file, pin_strategy, pin_node):
    """Build PATH for every --platform on the fastest nodes and (with --push) publish the index."""
    from .pipeline import build as run_build, write_metadata
    from .plugin import get_manager
    from .progress import make_reporter

    if quiet:
        progress = "quiet"
    request = _request_from(path, platform, tag, file, build_arg, label, target, push, no_cache, pull, progress,
                            metadata_file, insecure_registry, allow_partial, engine_cli,
                            parse_pins(pin_strategy, pin_node), report)
    config = _config(nodes_file, engine_cli, local)
    from .buildargs import secret_warning

    warning = secret_warning(request.build_args)
    if warning:
        click.echo(f"archfleet: warning: {warning}", err=True)
    pm = get_manager()
    reporter = make_reporter(progress)
    try:
        summary = _run(pm, run_build(pm, request, config, reporter))
        reporter.finished(summary)
    finally:
        reporter.close()
    if request.metadata_file:
        write_metadata(request.metadata_file, summary)
    if report:
        from .report import write_report

        write_report(Path(report), summary, request)
    if summary.index_digest:
        click.echo(summary.index_digest)
    elif not push:
        for r in summary.results:
            click.echo(f"{r.platform} {r.image_id}" + (f" {r.ref}" if r.ref else ""))


@cli.command()
@build_options
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True)
def plan(path, platform, tag, file, build_arg, label, target, push, no_cache, pull, progress, quiet, metadata_file,
         report, insecure_registry, allow_partial, engine_cli, local, nodes_file, pin_strategy, pin_node, fmt):
    """Show the chosen option per platform and the alternatives, without building."""
    from .pipeline import make_plan, unplannable_reason
    from .plugin import get_manager

    request = _request_from(path, platform, tag, file, build_arg, label, target, push, no_cache, pull, progress,
                            metadata_file, insecure_registry, allow_partial, engine_cli,
                            parse_pins(pin_strategy, pin_node), report)
    config = _config(nodes_file, engine_cli, local)
    pm = get_manager()
    planned = _run(pm, make_plan(pm, request, config))
    p = planned.plan
    if fmt == "json":
        doc = {
            "makespan_seconds": round(p.makespan, 2),
            "search": "exact" if p.exact else "greedy",
            "platforms": [
                {
                    "platform": str(s.option.platform), "strategy": s.option.strategy, "node": s.option.node,
                    "estimate_seconds": s.option.estimate, "start": round(s.start, 2), "finish": round(s.finish, 2),
                    "why": s.option.why, "estimate_basis": s.option.basis,
                    "alternatives": [
                        {"strategy": r.option.strategy, "node": r.option.node, "estimate_seconds": r.option.estimate,
                         "estimate_basis": r.option.basis, "why_not": r.why}
                        for r in p.rejected if r.option.platform == s.option.platform
                    ],
                }
                for s in p.chosen
            ],
            "unplannable": [{"platform": str(pl), "why": unplannable_reason(pl, planned)} for pl, _ in p.unplannable],
        }
        click.echo(json.dumps(doc, indent=2))
        return
    rows = [("PLATFORM", "CHOSEN", "EST", "FINISH", "WHY")]
    for s in p.chosen:
        rows.append((str(s.option.platform), str(s.option), f"{s.option.estimate:.1f}s", f"{s.finish:.1f}s", s.option.why))
        rows.append(("", "", "", "", f"estimate: {s.option.basis}"))
        for r in p.rejected:
            if r.option.platform == s.option.platform:
                rows.append(("", f"  not {r.option}", f"{r.option.estimate:.1f}s", "", r.why))
    click.echo(_table(rows))
    click.echo(f"makespan: {p.makespan:.1f}s ({'exact search' if p.exact else 'greedy schedule'})")
    for pl, _ in p.unplannable:
        click.echo(f"{pl}: CANNOT BUILD: {unplannable_reason(pl, planned)}")
    if p.unplannable:
        sys.exit(3)


@cli.command(name="ls")
@click.option("--engine-cli", envvar="ARCHFLEET_ENGINE_CLI", metavar="PATH", help="Engine CLI for the local node.")
@click.option("--local/--no-local", default=True)
@click.option("--nodes", "nodes_file", metavar="FILE", help="nodes.toml to use.")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True)
def ls_(engine_cli, local, nodes_file, fmt):
    """List build nodes with their native and emulated platforms (like `docker buildx ls`)."""
    from .pipeline import probe
    from .plugin import get_manager

    config = _config(nodes_file, engine_cli, local)
    pm = get_manager()
    facts = _run(pm, probe(pm, config))
    if fmt == "json":
        click.echo(json.dumps([
            {"name": f.name, "reachable": f.reachable, "error": f.error, "transport": f.node.transport,
             "engine_version": f.engine_version, "builder": f.builder, "engine_cli": list(f.engine_cli),
             "native": [str(p) for p in f.native], "emulated": [str(p) for p in f.emulated],
             "cpus": f.cpus, "memory": f.memory, "load": f.load, "score": f.score, "max_builds": f.node.max_builds,
             "busy": list(f.busy)}
            for f in facts.values()
        ], indent=2))
        return
    rows = [("NAME", "STATUS", "ENGINE", "BUILDER", "CPUS", "SCORE", "MAX", "NATIVE", "EMULATED")]
    for f in facts.values():
        status = "ready" if f.can_build else ("unreachable" if not f.reachable else "no builder")
        if f.can_build and f.busy:
            status += f" ({len(f.busy)} busy)"
        rows.append((f.name, status, f"docker {f.engine_version or '?'}", f.builder or "-", str(f.cpus),
                     f"{f.score:.2f}" if f.score else "-", str(f.node.max_builds),
                     ",".join(map(str, f.native)) or "-", ",".join(map(str, f.emulated)) or "-"))
    click.echo(_table(rows))
    for f in facts.values():
        if f.error:
            click.echo(f"{f.name}: {f.error}")


@cli.command()
@click.option("--install", "install", metavar="all|PLATFORMS", help="Register QEMU handlers (comma-separated platforms, or all).")
@click.option("--uninstall", "uninstall", metavar="PLATFORMS", help="Remove QEMU handlers.")
def binfmt(install, uninstall):
    """Show, register or remove QEMU binfmt_misc handlers (qemu-user-static, fix-binary flag)."""
    from . import binfmt as bf

    try:
        bf.ensure_mounted()
    except Exception as exc:
        raise UsageError(f"cannot mount binfmt_misc at {bf.MOUNT} ({exc}); are you root?") from None
    confs = bf.available_confs()
    if install:
        if not confs:
            raise UsageError("no QEMU handlers found in /usr/lib/binfmt.d; install qemu-user-static")
        if install.strip() == "all":
            wanted = sorted(confs)
        else:
            wanted = []
            for p in _platform_list("--install", install):
                name = bf.conf_for(p)
                if name not in confs:
                    raise UsageError(f"--install: qemu-user-static has no handler for {p}")
                wanted.append(name)
        native = {bf.conf_for(p) for p in plat.from_uname(_platform.machine()).native_also()}
        for name in wanted:
            if name in native:
                continue
            try:
                added = bf.register(confs[name])
            except OSError as exc:
                raise UsageError(f"cannot register {name}: {exc}; are you root?") from None
            click.echo(f"{'installed' if added else 'present'}: {name}")
    if uninstall:
        for p in _platform_list("--uninstall", uninstall):
            name = bf.conf_for(p)
            if name and bf.unregister(name):
                click.echo(f"removed: {name}")
    if not install and not uninstall:
        handlers = [h for h in bf.read_handlers() if h.name.startswith("qemu-")]
        for h in handlers:
            state = "enabled" if h.enabled else "disabled"
            ok = "" if h.usable_in_containers else " (not usable in containers: no F flag)"
            click.echo(f"{h.name}: {state} flags={h.flags} -> {','.join(map(str, h.platforms))}{ok}")
        if not handlers:
            click.echo("no QEMU handlers registered; run `archfleet binfmt --install all`")


@cli.command(name="plugins")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True)
def plugins_(fmt):
    """List loaded plugins (built-in and installed), their versions and the hooks each implements."""
    from . import __version__
    from .plugin import BUILTIN_PLUGINS, get_manager

    pm = get_manager()
    dists = {id(plugin): dist for plugin, dist in pm.list_plugin_distinfo()}
    builtin = {d.rsplit(".", 1)[-1] for d in BUILTIN_PLUGINS}
    rows = []
    for name, plugin in sorted(pm.list_name_plugin(), key=lambda np: (np[0] not in builtin, str(np[0]))):
        if plugin is None:
            continue  # blocked (ARCHFLEET_DISABLE_PLUGINS)
        hooks = sorted(h.name for h in pm.get_hookcallers(plugin) or [])
        dist = dists.get(id(plugin))
        if dist is not None:
            source, version = f"{dist.project_name}", dist.version
        else:
            source, version = ("builtin", __version__) if name in builtin else ("registered", "-")
        rows.append({"name": name, "version": version, "source": source, "hooks": hooks})
    disabled = sorted(n for n, p in pm.list_name_plugin() if p is None)
    if fmt == "json":
        click.echo(json.dumps({"plugins": rows, "disabled": disabled}, indent=2))
        return
    table = [("NAME", "VERSION", "FROM", "HOOKS")]
    for r in rows:
        table.append((r["name"], r["version"], r["source"], ", ".join(h.replace("archfleet_", "") for h in r["hooks"])))
    click.echo(_table(table))
    if disabled:
        click.echo("disabled: " + ", ".join(disabled))


@cli.command()
@click.option("--registry", "registries", multiple=True, metavar="HOST[:PORT]",
              help="A registry to check (reachable, credentials, HTTP); repeatable.")
@click.option("--insecure-registry", multiple=True, metavar="HOST[:PORT]", help="Plain HTTP is allowed here.")
@click.option("--engine-cli", envvar="ARCHFLEET_ENGINE_CLI", metavar="PATH", help="Engine CLI for the local node.")
@click.option("--local/--no-local", default=True, help="Check the local engine and binfmt handlers.")
@click.option("--nodes", "nodes_file", metavar="FILE", help="nodes.toml to check.")
def doctor(registries, insecure_registry, engine_cli, local, nodes_file):
    """Check the engine, BuildKit, QEMU handlers, registries and nodes; say what to fix."""
    from . import doctor as doc
    from .plugin import get_manager

    for host in registries:
        if not host or "/" in host:
            raise UsageError(f"--registry {host!r}: give HOST[:PORT] only")
    config = _config(nodes_file, engine_cli, local)
    pm = get_manager()
    checks = _run(pm, doc.run(pm, config, tuple(registries), tuple(insecure_registry), engine_cli))
    for c in checks:
        click.echo(c.line())
    failed = [c for c in checks if c.status == "FAIL"]
    click.echo(f"{len(checks)} checks, {len(failed)} failed, {sum(c.status == 'warn' for c in checks)} warnings")
    if failed:
        sys.exit(3)


def _platform_list(flag: str, text: str):
    try:
        return plat.parse_list(text)
    except plat.PlatformError as exc:
        raise UsageError(f"{flag}: {exc}") from None


def _table(rows) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = []
    for r in rows:
        lines.append("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
    return "\n".join(lines)


def main(argv=None) -> int:
    debug = os.environ.get("ARCHFLEET_DEBUG") == "1"
    try:
        cli.main(args=argv, prog_name="archfleet", standalone_mode=False)
        return 0
    except click.exceptions.NoSuchOption as exc:
        _say(f"{exc.format_message()} (see archfleet {exc.ctx.command.name if exc.ctx else ''} --help)")
        return 2
    except click.exceptions.UsageError as exc:
        hint = f" (see archfleet {exc.ctx.info_name} --help)" if exc.ctx else ""
        _say(exc.format_message() + hint)
        return 2
    except click.exceptions.Abort:
        _say("interrupted")
        return 130
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except ArchfleetError as exc:
        _say(str(exc))
        if debug:
            raise
        return exc.exit_code
    except KeyboardInterrupt:
        _say("interrupted")
        return 130
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 1
    except Exception as exc:
        if debug:
            raise
        _say(f"internal error: {type(exc).__name__}: {exc} (ARCHFLEET_DEBUG=1 shows the traceback)")
        return 70


def _say(message: str) -> None:
    sys.stderr.write(f"archfleet: error: {message}\n")


def entrypoint() -> None:
    sys.exit(main())


if __name__ == "__main__":
    entrypoint()
