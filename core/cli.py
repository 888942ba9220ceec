"""The ``archfleet`` command. Flags follow ``docker buildx build`` where the meaning is the same.

Every failure a person can cause or fix is one line on stderr and a documented exit code
(see :mod:`archfleet.errors`); ``ARCHFLEET_DEBUG=1`` adds the traceback.
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import platform as _platform
import re
import signal
import subprocess
import sys
import tempfile
import time
import threading
from pathlib import Path

import attrs
import click

from . import platforms as plat
from .console import Pressed, word as _signal_word
from .errors import ArchfleetError, EnvironmentProblem, Interrupted, UsageError
from .inventory import Config, not_utf8
from .buildcache import check_refs as check_cache_refs, parse_cache
from .model import Annotation, BuildRequest
from .outputs import check_outputs, parse_output
from .planner import parse_pins
from .secrets import check_flags as check_secret_flags, check_mounts, parse_secret, parse_ssh
from .reference import SEED_CHILD_TAGS, child_ref, child_tag_name, parse_push_target, parse_registry_host


def _fail_param(param: str, message: str) -> UsageError:
    return UsageError(f"{param}: {message}")


def _writable_file(flag: str, value: str) -> None:
    """A file archfleet writes after the build (``--metadata-file``, ``--report``) must be
    writable now: its directory exists and takes a new file (tried with a temporary file, which
    also holds for root on a read-only or special filesystem), or the file itself opens for
    appending (its content is left as it is)."""
    target = Path(value)
    parent = target.absolute().parent
    if not parent.is_dir():
        raise _fail_param(flag, f"directory {str(parent)!r} does not exist; create it first")
    if target.is_dir():
        raise _fail_param(flag, f"{value!r} is a directory; name a file")
    try:
        if target.exists():
            with open(target, "ab"):
                pass
        else:
            with tempfile.NamedTemporaryFile(dir=parent, prefix=".archfleet-check-"):
                pass
    except OSError as exc:
        raise _fail_param(flag, f"cannot write {value!r}: {exc.strerror}") from None


ANNOTATION_KINDS = ("index", "manifest", "manifest-descriptor")
_ANNOTATION_TYPE = re.compile(r"([a-z-]+)(?:\[([A-Za-z0-9_/.-]+)\])?")


def _check_engine_cli(value: str) -> None:
    """``--engine-cli`` (or ``$ARCHFLEET_ENGINE_CLI``) names a program that exists: a path to an
    executable file, or a name on ``PATH``. Whether it can build is the probe's to say."""
    import shutil

    found = (os.path.isfile(value) and os.access(value, os.X_OK)) if "/" in value else shutil.which(value)
    if not found:
        raise UsageError(f"--engine-cli {value!r} (or $ARCHFLEET_ENGINE_CLI): no such program; name a docker CLI "
                         "(e.g. /usr/bin/docker) or podman")


def parse_annotations(values, platforms) -> tuple[list[Annotation], list[str]]:
    """``--annotation`` values in buildx's syntax, ``[TYPE[PLATFORM],...:]KEY=VALUE`` (buildx's
    ``ParseAnnotations``): TYPE is ``index`` (the index itself), ``manifest`` (each child
    manifest; also a bare ``KEY=VALUE``) or ``manifest-descriptor`` (each child's entry in the
    index); ``[PLATFORM]`` limits a manifest or descriptor annotation to one platform being
    built. ``index-descriptor`` (only an OCI layout output has one) is refused. Returns the
    annotations and the problems found (one line each)."""
    out: list[Annotation] = []
    problems: list[str] = []
    for item in values:
        keypart, eq, value = item.partition("=")
        if not eq:
            problems.append(f"--annotation {item!r}: expected [TYPE:]KEY=VALUE")
            continue
        kinds, colon, key = keypart.partition(":")
        if not colon:
            kinds, key = "manifest", keypart
        if not key or any(c.isspace() for c in key):
            problems.append(f"--annotation {item!r}: the KEY is empty or has spaces")
            continue
        for kind_text in kinds.split(","):
            m = _ANNOTATION_TYPE.fullmatch(kind_text)
            if not m:
                problems.append(f"--annotation {item!r}: {kind_text!r} is not TYPE or TYPE[PLATFORM]")
                continue
            kind, where = m.group(1), m.group(2)
            if kind == "index-descriptor":
                problems.append(f"--annotation {item!r}: index-descriptor annotations exist only in an OCI "
                                "layout output; archfleet pushes to a registry (use index: or manifest-descriptor:)")
                continue
            if kind not in ANNOTATION_KINDS:
                problems.append(f"--annotation {item!r}: unknown type {kind!r} (use "
                                + ", ".join(ANNOTATION_KINDS) + ")")
                continue
            target = None
            if where:
                if kind == "index":
                    problems.append(f"--annotation {item!r}: an index annotation is for the whole index; "
                                    "drop the [PLATFORM]")
                    continue
                try:
                    target = plat.parse(where)
                except plat.PlatformError as exc:
                    problems.append(f"--annotation {item!r}: {exc}")
                    continue
                if platforms and target not in platforms:
                    problems.append(f"--annotation {item!r}: {target} is not a platform being built")
                    continue
            out.append(Annotation(kind, key, value, target))
    return out, problems


def check_child_tags(template: str, refs, platforms) -> None:
    """``--child-tags``: every child's tag, for every ``-t`` tag, is a valid tag, no two
    platforms get the same one, and none is a ``-t`` tag of the same repository. Raises
    :class:`UsageError` (one line)."""
    if os.path.exists(template) and "{" not in template:
        raise UsageError(f"--child-tags {template!r}: that is a path, not a template; write --child-tags "
                         "before other flags or as --child-tags=TEMPLATE (alone it means the seed style "
                         f"{SEED_CHILD_TAGS})")
    requested = {(r.name, r.tag) for r in refs}
    for ref in refs:
        seen: dict[str, object] = {}
        for p in platforms:
            name = child_tag_name(template, ref, p)
            if name in seen:
                raise UsageError(f"--child-tags {template!r}: {seen[name]} and {p} would both be tagged "
                                 f"{name!r}; use {{platform}}, or {{arch}}{{variant}}")
            if (ref.name, name) in requested:
                raise UsageError(f"--child-tags {template!r}: {p}'s child would take the tag {ref.name}:{name}, "
                                 "which -t names for the index")
            seen[name] = p


def _request_from(path, platform, tag, file, build_arg, label, target, push, no_cache, pull, progress,
                  metadata_file, insecure_registry, allow_partial, engine_cli, pin_flags=((), ()),
                  report=None, annotation=(), child_tags=None, secret=(), ssh=(), cache_from=(), cache_to=(),
                  output=(), load=False) -> BuildRequest:
    """The :class:`BuildRequest` for ``build``/``plan``, every flag checked first.

    Everything the flags alone decide is checked in this one pass, before any node is probed or
    anything built: paths (exist, writable, UTF-8), platforms (Linux, known), tags (distribution's
    grammar, no digest, the engine's per-platform image names fit 128 characters), build args,
    labels, registries, ``--push`` with a tag, ``--annotation`` (``annotation``: buildx's syntax,
    :func:`parse_annotations`) and ``--child-tags`` (``child_tags``: every name it gives,
    :func:`check_child_tags`), both only with ``--push``, the syntax of ``--strategy``/``--node`` (``pin_flags``: their
    values; which nodes and strategies exist is ``pipeline.check_request``'s job), ``--secret``
    and ``--ssh`` (:func:`archfleet.secrets.parse_secret`, :func:`~archfleet.secrets.parse_ssh`:
    files readable, variables set, no id twice, never a value in a message) and the Dockerfile's
    required secret and ssh mounts against them (:func:`archfleet.secrets.check_mounts`),
    ``--cache-from``/``--cache-to`` (:func:`archfleet.buildcache.parse_cache`; ``--cache-to``
    needs ``--push``), ``-o`` (:func:`archfleet.outputs.parse_output`: the destination can be
    written) and ``--load`` (a platform the local engine can take). All problems
    found are reported together, as one line (``; ``-separated), with :class:`UsageError`
    (exit 2); values that are not UTF-8 are reported first, alone."""
    problems: list[str] = []

    def check(fn, *args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except UsageError as exc:
            problems.append(str(exc))
            return None

    files = (file,) if isinstance(file, str) else tuple(file or ())
    values = [("PATH", path), ("--target", target), ("--metadata-file", metadata_file),
              ("--report", report), ("--engine-cli", engine_cli)] + [("--file", f) for f in files]
    # build-arg values may be secrets: only their names are ever repeated in a message
    values += [(f"--build-arg {item.partition('=')[0]!r}", item.partition("=")[0]) for item in build_arg]
    values += [(flag, v) for flag, many in (("--platform", platform), ("--tag", tag),
                                            ("--label", label), ("--insecure-registry", insecure_registry),
                                            ("--strategy", pin_flags[0]), ("--node", pin_flags[1]),
                                            ("--annotation", annotation), ("--child-tags", (child_tags or "",)),
                                            ("--secret", secret), ("--ssh", ssh), ("--cache-from", cache_from),
                                            ("--cache-to", cache_to), ("--output", output))
               for v in many]
    encoding = [m for flag, value in values if value is not None and (m := not_utf8(flag, value))]
    if encoding:  # the other checks would only repeat these values
        raise UsageError("; ".join(encoding))

    context = Path(path)
    platforms: tuple = ()
    platforms_ok = True
    try:
        platforms = plat.parse_list(list(platform)) if platform else (plat.from_uname(_platform.machine()),)
        if not platforms:
            problems.append("--platform: no platform given")
    except plat.PlatformError as exc:
        problems.append(f"--platform: {exc}")
        platforms_ok = False
    default, own = _dockerfiles(files, problems)
    dockerfile = default if default is not None else context / "Dockerfile"
    if not context.exists():
        problems.append(f"PATH: build context {path!r} does not exist")
    elif not context.is_dir():
        problems.append(f"PATH: build context {path!r} is not a directory")
    elif (not platforms or any(p not in dict(own) for p in platforms)) and not dockerfile.is_file():
        # the default is read only by the platforms without a file of their own
        problems.append(f"--file: Dockerfile {str(dockerfile)!r} not found" + ("" if default else "; name it with -f"))
    if context.is_dir():
        from .context import ignore_file

        for df in {dockerfile, *(f for _, f in own)}:
            try:
                ignore_file(context, Path(df))
            except UsageError as exc:
                problems.append(str(exc))
    if platforms_ok:
        for p, _ in own:
            if p not in platforms:
                problems.append(f"--file {p}=...: {p} is not being built (--platform "
                                f"{','.join(map(str, platforms))}); drop it or add the platform")
    refs = [check(parse_push_target, t, what="--tag") for t in tag]
    if refs and refs[0] is not None and platforms:
        # children are pushed as <first tag>-<os>-<arch>[-<variant>]: the longest must fit
        check(child_ref, refs[0], max((p.tag_suffix for p in platforms), key=len))
    pins = check(parse_pins, *pin_flags) or ()
    if push and not tag:
        problems.append("--push: name where to push with -t/--tag")
    annotations, bad = parse_annotations(annotation, platforms)
    problems += bad
    if annotations and not push:
        problems.append("--annotation: annotations go on what is pushed; add --push")
    if child_tags is not None:
        if not push:
            problems.append("--child-tags: child tags are pushed; add --push")
        elif platforms and refs and None not in refs:
            check(check_child_tags, child_tags, refs, platforms)
    args: dict[str, str] = {}  # like docker: a later value for the same name wins
    from_env: set[str] = set()
    for item in build_arg:
        key, eq, value = item.partition("=")
        if not key or not key.replace("_", "a").isalnum() or key[0].isdigit() or not key.isascii():
            problems.append(f"--build-arg: {key!r} is not a NAME (A-Z a-z 0-9 _, not starting with a digit)")
            continue
        if not eq:
            if key not in os.environ:
                continue  # like docker: a bare NAME takes its value from the environment, if set
            value = os.environ[key]
        if not_utf8("", value):
            problems.append(f"--build-arg {key}: the value" + (f" of ${key}" if not eq else "") + " is not UTF-8")
            continue
        if eq:
            from_env.discard(key)
        else:
            from_env.add(key)  # and reaches the engine CLI in its environment, never in argv
        args[key] = value
    labels = []
    for item in label:
        key, eq, value = item.partition("=")
        if not key or not eq:
            problems.append(f"--label: {item!r} is not KEY=VALUE")
            continue
        labels.append((key, value))
    if target is not None and not target.strip():
        problems.append("--target: name a stage")
    for host in insecure_registry:
        check(parse_registry_host, host, what="--insecure-registry")
    for flag, value in (("--metadata-file", metadata_file), ("--report", report)):
        if value:
            check(_writable_file, flag, value)
    if metadata_file and report and Path(metadata_file).absolute() == Path(report).absolute():
        problems.append(f"--report: {report!r} is also the --metadata-file; name two files")
    secrets = [s for s in (check(parse_secret, v) for v in secret) if s is not None]
    agents = [a for a in (check(parse_ssh, v) for v in ssh) if a is not None]
    problems += check_secret_flags(secrets, agents)
    caches_from = [c for c in (check(parse_cache, "--cache-from", v) for v in cache_from) if c is not None]
    caches_to = [c for c in (check(parse_cache, "--cache-to", v) for v in cache_to) if c is not None]
    check(check_cache_refs, "--cache-from", caches_from, platforms)
    check(check_cache_refs, "--cache-to", caches_to, platforms)
    if caches_to and not push:
        problems.append("--cache-to: archfleet writes caches beside the children it pushes; add --push")
    outs = [o for o in (check(parse_output, v) for v in output) if o is not None]
    problems += check_outputs(outs)
    if load and platforms_ok and platforms:
        local = plat.from_uname(_platform.machine())
        if load_platform_of(platforms, local) is None:
            problems.append(f"--load: the local engine runs {local}, which is not being built; build it too, or "
                            "name one --platform to load")
    if problems:
        raise UsageError("; ".join(dict.fromkeys(problems)))
    request = BuildRequest(
        context=context.resolve(), dockerfile=dockerfile.resolve(), platforms=platforms, tags=tuple(tag),
        platform_dockerfiles=tuple((p, f.resolve()) for p, f in own),
        build_args=list(args.items()), env_build_args=tuple(k for k in args if k in from_env),
        labels=labels, target=target, push=push, no_cache=no_cache, pull=pull, progress=progress,
        metadata_file=Path(metadata_file) if metadata_file else None,
        insecure_registries=tuple(insecure_registry), allow_partial=allow_partial, engine_cli=engine_cli,
        pins=tuple(pins), annotations=tuple(annotations), child_tags=child_tags,
        secrets=tuple(secrets), secret_ids=tuple(s.id for s in secrets), ssh=tuple(agents),
        cache_from=tuple(caches_from), cache_to=tuple(caches_to), outputs=tuple(outs), load=load,
    )
    mounts = check_mounts(request)  # the Dockerfile's required secret and ssh mounts, against the flags
    if mounts:
        raise UsageError("; ".join(dict.fromkeys(mounts)))
    return request


def load_platform_of(platforms, local):
    """The platform ``--load`` takes (:func:`archfleet.outputs.load_platform`) of ``platforms``."""
    from .outputs import load_platform

    return load_platform(attrs.evolve(_EMPTY, platforms=tuple(platforms)), local)


_EMPTY = BuildRequest(context=Path("."), dockerfile=Path("Dockerfile"), platforms=())


def _dockerfiles(files, problems: list[str]) -> tuple[Path | None, list[tuple[plat.Platform, Path]]]:
    """The ``-f`` values: the default Dockerfile (None: not given) and the per-platform ones.

    ``-f PATH`` names the default, ``-f PLATFORM=PATH`` the file of one platform (normalised as
    ``--platform`` is, so ``armhf=...`` is ``linux/arm/v7``); a value that is an existing file
    is a path whatever it holds. Paths are as for ``-f`` alone: relative to the working
    directory. Problems (not a platform, two defaults, two files for one platform, a file that
    is missing) are appended to ``problems``, one each, for the CLI's one pass."""
    default: Path | None = None
    own: dict[plat.Platform, Path] = {}
    for value in files:
        key, eq, rest = value.partition("=")
        if not eq or Path(value).is_file():
            if default is not None and Path(value) != default:
                problems.append(f"--file: two default Dockerfiles ({str(default)!r} and {value!r}); give one, and "
                                "PLATFORM=PATH for a platform's own")
            else:
                default = Path(value)
            continue
        try:
            p = plat.parse(key)
        except plat.PlatformError as exc:
            problems.append(f"--file {value!r}: no such file, and {key!r} is not a platform ({exc}); "
                            "give PATH or PLATFORM=PATH")
            continue
        if not rest:
            problems.append(f"--file {value!r}: name the Dockerfile for {p} after the '='")
            continue
        if p in own and own[p] != Path(rest):
            problems.append(f"--file: two Dockerfiles for {p} ({str(own[p])!r} and {rest!r}); give one")
            continue
        own[p] = Path(rest)
        if not Path(rest).is_file():
            problems.append(f"--file {key}={rest}: Dockerfile {rest!r} not found")
    return default, list(own.items())


def build_options(fn):
    """The flags ``build`` and ``plan`` share (a plan is a build that stops before running)."""
    opts = [
        click.argument("path", default=".", required=False),
        click.option("--platform", multiple=True, help="Target platforms, comma-separated or repeated (linux/arm64,...)."),
        click.option("-t", "--tag", multiple=True, help="Name and tag (registry/repo:tag); repeatable."),
        click.option("-f", "--file", multiple=True, metavar="[PLATFORM=]PATH",
                     help="Dockerfile (default: PATH/Dockerfile); PLATFORM=PATH gives one platform its own, "
                          "repeatable: -f linux/arm/v7=Dockerfile.armv7 -f Dockerfile."),
        click.option("--build-arg", multiple=True, help="Build-time variable NAME=VALUE; repeatable."),
        click.option("--label", multiple=True, help="Image label KEY=VALUE; repeatable."),
        click.option("--target", help="Build stage to build."),
        click.option("--push", is_flag=True,
                     help="Push the per-platform images (by digest) and the index to the tags."),
        click.option("--child-tags", "child_tags", is_flag=False, flag_value=SEED_CHILD_TAGS, default=None,
                     metavar="[TEMPLATE]", help="Also tag each child: alone, <tag>-<os>-<arch>[-<variant>]; or a "
                     "template of {tag} {platform} {os} {arch} {variant}, e.g. '{tag}-{arch}{variant}'."),
        click.option("--annotation", multiple=True, metavar="[TYPE:]KEY=VALUE",
                     help="Annotation, buildx's syntax: index:, manifest: (default), manifest-descriptor:, "
                          "optionally TYPE[PLATFORM]; repeatable."),
        click.option("--secret", multiple=True, metavar="id=ID[,src=PATH|,env=VAR]",
                     help="A secret for RUN --mount=type=secret,id=ID; repeatable. Never in argv, logs or the image: "
                          "on SSH nodes it travels on the SSH channel into a tmpfs file deleted before the build "
                          "starts. E.g. --secret id=npmrc,src=$HOME/.npmrc"),
        click.option("--ssh", multiple=True, metavar="default|ID[=PATH[,PATH]]",
                     help="SSH agent or keys for RUN --mount=type=ssh; repeatable. default: $SSH_AUTH_SOCK, "
                          "forwarded to SSH nodes for the build only. E.g. --ssh default"),
        click.option("--cache-from", "cache_from", multiple=True, metavar="[type=registry,ref=]REF",
                     help="A registry cache to read, per platform (REF-<os>-<arch>, and REF itself); repeatable. "
                          "E.g. --cache-from reg/app:cache"),
        click.option("--cache-to", "cache_to", multiple=True, metavar="type=registry,ref=REF[,mode=max]|type=inline",
                     help="Write the build cache to REF-<os>-<arch> per platform (needs --push; Docker 20.10 "
                          "without buildx: inline, mode=min only). E.g. --cache-to type=registry,ref=reg/app:cache"),
        click.option("-o", "--output", multiple=True, metavar="type=local,dest=DIR|type=tar,dest=FILE",
                     help="Also write the result's files: into DIR (several platforms: DIR/<os>_<arch>/) or one "
                          "tar FILE; repeatable. E.g. -o type=local,dest=out"),
        click.option("--load", is_flag=True,
                     help="Put the local engine's platform (or the one --platform) into the local engine under "
                          "each -t, wherever it was built. E.g. --load -t app:dev"),
        click.option("--no-cache", is_flag=True, help="Do not use the build cache."),
        click.option("--pull/--no-pull", default=True, show_default=True,
                     help="Resolve base images in their registry rather than the engine's image store."),
        click.option("--progress", type=click.Choice(["auto", "plain", "tty", "quiet"]), default="auto",
                     show_default=True, help="Progress output."),
        click.option("-q", "--quiet", is_flag=True, help="Print only the index digest (or image ids)."),
        click.option("--metadata-file", metavar="FILE", help="Write build results as JSON here."),
        click.option("--report", metavar="FILE.html",
                     help="Write a self-contained HTML report: timeline per node, planned vs actual."),
        click.option("--insecure-registry", multiple=True, metavar="HOST[:PORT]",
                     help="Allow plain HTTP to this registry (loopback registries always are)."),
        click.option("--allow-partial", is_flag=True, help="Push an index of the platforms that succeeded."),
        click.option("--engine-cli", envvar="ARCHFLEET_ENGINE_CLI", metavar="PATH",
                     help="Engine CLI for the local node (needs buildx or built-in BuildKit). "
                          "Default: the first docker on PATH that can, then /usr/bin/docker."),
        click.option("--local/--no-local", default=True, help="Use the local engine as a build node."),
        click.option("--nodes", "nodes_file", metavar="FILE", help="nodes.toml to use (default: $ARCHFLEET_NODES, "
                     "then ~/.config/archfleet/nodes.toml; ./nodes.toml only when named)."),
        click.option("--strategy", "pin_strategy", multiple=True, metavar="[PLATFORM=]STRATEGY",
                     help="Only this strategy (native, qemu, cross, ...), for all or one platform."),
        click.option("--node", "pin_node", multiple=True, metavar="[PLATFORM=][STRATEGY@]NODE",
                     help="Only this node, for all or one platform: linux/arm64=native@pi4."),
    ]
    for opt in reversed(opts):
        fn = opt(fn)
    return fn


def _config(hooks, nodes, engine_cli, local) -> Config:
    """The nodes configuration; a ``./nodes.toml`` left unread is said in one stderr line. An
    ``--engine-cli`` that names no program is bad input here for every command (``ls`` and
    ``doctor`` too)."""
    from .pipeline import load_config

    if engine_cli:
        _check_engine_cli(engine_cli)

    return load_config(hooks, nodes=nodes, engine_cli=engine_cli, local=local,
                       note=lambda line: click.echo(f"archfleet: warning: {line}", err=True))


def _hooks():
    """This command's plugin manager (built-ins, installed plugins, ``ARCHFLEET_*`` settings)."""
    from .manager import make_hooks

    return make_hooks()


class _CtrlC:
    """SIGINT while :func:`_run`'s event loop runs, in place of asyncio.Runner's own handler.

    While the command's task runs, the first Ctrl-C cancels it. A second one stops the loop with
    KeyboardInterrupt, as asyncio.Runner's does, but raised by a callback of the loop (between
    two of its steps), not wherever the main thread happens to be: raised there, inside
    asyncio's own work, it was dropped ("Exception ignored in: <function WeakSet...>", a
    traceback after the one line), and not while a command is being started
    (:func:`archfleet.transport.starting`): the loop's shutdown then waited for ever on the
    half-started command (two quick Ctrl-Cs, 1 in 20-30 under load: found by the fresh-user
    helper). A third one raises at once (a loop that does not come back to its callbacks, or
    a shutdown that waits on a thread).
    Once the task is done, Runner would raise KeyboardInterrupt from inside the loop's last
    iteration; the loop then keeps the stop its task asked for, and the next
    ``run_until_complete`` (Runner's own shutdown of the default executor) fails with "Event
    loop stopped before Future completed": exit 70, "internal error", after the tags moved. So
    then the Ctrl-C is only noted (``late``), also while the loop shuts down and closes:
    :func:`_run` raises it once the loop is closed."""

    def __init__(self):
        self.task: asyncio.Task | None = None
        self.count = 0
        self.late = False
        self.signum: int | None = None  # the last signal: SIGINT, or SIGTERM (handled alike)

    def __call__(self, signum, frame):
        self.count += 1
        self.signum = signum
        task = self.task
        if self.count >= 3:  # a loop, or a shutdown, that does not come back: stop it where it is
            raise KeyboardInterrupt(_signal_word(signum))
        if task is not None and task.done():
            self.late = True
            return
        if self.count == 1 and task is not None:
            task.cancel()
            task.get_loop().call_soon_threadsafe(lambda: None)  # wake a select() that waits long
            return
        if self.count == 2 and task is not None and not task.get_loop().is_closed():
            task.get_loop().call_soon_threadsafe(self._stop, signum)
            return
        raise KeyboardInterrupt(_signal_word(signum))

    def _stop(self, signum) -> None:
        if self.task is not None and self.task.done():
            self.late = True  # the run ended meanwhile: its answer is out of the loop first
            return
        from .transport import starting

        if starting():  # a command's start is under way: stopped now, the shutdown would wait for ever
            asyncio.get_running_loop().call_later(0.005, self._stop, signum)
            return
        raise KeyboardInterrupt(_signal_word(signum))


def _run(hooks, work, *, more: bool = False):
    """Run ``work(session)`` on a new event loop as one command (:func:`pipeline.run_command`);
    ``more``: another run of the command follows (a Ctrl-C until it starts is noted, then raised).

    Ctrl-C (:class:`_CtrlC`) cancels the run; once asyncio.run's work is over it is raised as
    :class:`Interrupted` (one line, exit 130: click would print an empty line and drop the message
    saying what could not be stopped). A Ctrl-C while the loop shuts down (the default executor's
    threads joined) and closes is noted and raised once it is closed; a third one stops that
    wait."""
    from .pipeline import run_command

    if _exit_after_command:
        # One command per process: what the imports made lives until the exit. Frozen, the
        # cyclic collector skips it during the run and while the interpreter tears its modules
        # down (that teardown took 60-80 ms of a 1 s build, issue 17). Not when main() is called
        # in-process (tests): frozen objects are never collected. The console script kept the
        # collector off while the modules loaded (archfleet.console): on again for the run.
        gc.freeze()
        gc.enable()
    ctrl_c = _CtrlC()

    async def command():
        ctrl_c.task = asyncio.current_task()
        return await run_command(hooks, work)

    # as asyncio.Runner decides whether to handle SIGINT: main thread, Python's default handler.
    # SIGTERM (a CI job cancelled, `timeout`, a service stopping) is handled as SIGINT is, when
    # nobody else handles it: killed by it, the run left its engine CLI running and its leases
    # held (found by the fresh-user helper)
    # The console script's handler (archfleet.console.Pressed) noted a Ctrl-C that came before
    # this run, without raising it wherever the main thread was: it is raised here, before the
    # run starts. After the run it notes again when another run of the command follows
    # (``more``); else Python's handlers are back, for what the command does after its run.
    main = threading.current_thread() is threading.main_thread()
    before_int = signal.getsignal(signal.SIGINT) if main else None
    before_term = signal.getsignal(signal.SIGTERM) if main else None
    own = main and (before_int is signal.default_int_handler or isinstance(before_int, Pressed))
    own_term = main and (before_term == signal.SIG_DFL or isinstance(before_term, Pressed))
    after_int = before_int if more or not isinstance(before_int, Pressed) else signal.default_int_handler
    after_term = before_term if more or not isinstance(before_term, Pressed) else signal.SIG_DFL
    try:
        noted = next((h for h in (before_int, before_term) if isinstance(h, Pressed)), None)
        if noted is not None and noted.count:
            raise KeyboardInterrupt(_signal_word(noted.signum))
        try:
            with asyncio.Runner() as runner:
                if own:
                    signal.signal(signal.SIGINT, ctrl_c)
                if own_term:
                    signal.signal(signal.SIGTERM, ctrl_c)
                try:
                    answer = runner.run(command())
                except asyncio.CancelledError:
                    if ctrl_c.count:
                        raise KeyboardInterrupt(_signal_word(ctrl_c.signum)) from None
                    raise
        finally:
            # only once the loop is closed: a KeyboardInterrupt raised inside its close left it
            # half closed ("Exception ignored in: BaseEventLoop.__del__ ... Invalid file
            # descriptor: -1" after the one line)
            if own and signal.getsignal(signal.SIGINT) is ctrl_c:
                signal.signal(signal.SIGINT, after_int)
            if own_term and signal.getsignal(signal.SIGTERM) is ctrl_c:
                signal.signal(signal.SIGTERM, after_term)
        if ctrl_c.late:
            raise KeyboardInterrupt(_signal_word(ctrl_c.signum))
        return answer
    except KeyboardInterrupt as exc:
        raise Interrupted(str(exc) or "interrupted") from None


def _no_run() -> None:
    """For a command without a run (``plugins``, ``binfmt``): a Ctrl-C or SIGTERM the console
    script noted since the start (:class:`archfleet.console.Pressed`) is raised now, and
    Python's handlers are back for the rest of the command, as they were before the console
    script noted them (a single Ctrl-C went unheard by ``binfmt --uninstall``, which went on:
    found by the fresh-user helper). Raises :class:`Interrupted` (exit 130, one line)."""
    if threading.current_thread() is not threading.main_thread():
        return
    noted = None
    for sig, python in ((signal.SIGINT, signal.default_int_handler), (signal.SIGTERM, signal.SIG_DFL)):
        handler = signal.getsignal(sig)
        if isinstance(handler, Pressed):
            noted = handler
            signal.signal(sig, python)
    if noted is not None and noted.count:
        raise Interrupted(_signal_word(noted.signum))


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="archfleet")
def cli():
    """Build one container image for many CPU platforms and publish it under one tag."""


@cli.command()
@build_options
def build(path, platform, tag, file, build_arg, label, target, push, child_tags, annotation, secret, ssh, cache_from,
          cache_to, output, load, no_cache, pull, progress, quiet, metadata_file, report, insecure_registry,
          allow_partial, engine_cli, local, nodes_file, pin_strategy, pin_node):
    """Build PATH for every --platform on the fastest nodes and (with --push) publish the index."""
    from .registry import prepare_tls

    prepare_tls()  # the CA store loads in a thread while the rest starts
    from .pipeline import RunState, build as run_build, check_request, write_metadata
    from .progress import make_reporter

    if quiet:
        progress = "quiet"
    request = _request_from(path, platform, tag, file, build_arg, label, target, push, no_cache, pull, progress,
                            metadata_file, insecure_registry, allow_partial, engine_cli,
                            (pin_strategy, pin_node), report, annotation, child_tags, secret, ssh, cache_from,
                            cache_to, output, load)
    from .secrets import hold_env

    hold_env(request.secrets)  # no process archfleet starts inherits an env= secret's variable
    hooks = _hooks()
    config = _config(hooks, nodes_file, engine_cli, local)
    from .buildargs import secret_warning


    async def check(session):
        check_request(hooks, request, config, session)

    _run(hooks, check, more=True)  # pins and the Dockerfile, before the registry is asked or a display drawn
    warning = secret_warning(request.build_args)  # after the checks: bad input stays one line
    if warning:
        click.echo(f"archfleet: warning: {warning}", err=True)
    reporter = make_reporter(progress)  # guarded: progress output never fails the build
    global _run_state
    _run_state = state = RunState()  # main() and entrypoint() say it too, for a Ctrl-C that reaches them
    try:
        try:
            try:
                summary = _run(hooks, lambda session: run_build(hooks, request, config, reporter, session, state))
                reporter.finished(summary)
            finally:
                reporter.close()  # before the error line: a live tty display would hide it
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
        except (KeyboardInterrupt, Interrupted) as exc:
            # Ctrl-C after the tags moved: say so, not just "interrupted"
            raise Interrupted(_interrupted(exc)) from None
    finally:
        _hold_sigint_until_exit()  # the outcome is decided, and said (or about to be)


@cli.command()
@build_options
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True)
def plan(path, platform, tag, file, build_arg, label, target, push, child_tags, annotation, secret, ssh, cache_from,
         cache_to, output, load, no_cache, pull, progress, quiet, metadata_file, report, insecure_registry,
         allow_partial, engine_cli, local, nodes_file, pin_strategy, pin_node, fmt):
    """Show the chosen option per platform and the alternatives, without building."""
    from .registry import prepare_tls

    prepare_tls()  # the CA store loads in a thread while the rest starts
    from .pipeline import plan_only, stale_context, unplannable_reason

    request = _request_from(path, platform, tag, file, build_arg, label, target, push, no_cache, pull, progress,
                            metadata_file, insecure_registry, allow_partial, engine_cli,
                            (pin_strategy, pin_node), report, annotation, child_tags, secret, ssh, cache_from,
                            cache_to, output, load)
    hooks = _hooks()
    config = _config(hooks, nodes_file, engine_cli, local)
    planned = _run(hooks, lambda session: plan_only(hooks, request, config, session))
    stale = stale_context(planned)
    if stale:
        click.echo(f"archfleet: warning: {stale}", err=True)
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
                    "estimate_parts": dict(s.option.parts),
                    "steps": [{"stage": st.stage, "index": st.index, "step": st.text, "platform": str(st.platform),
                               "emulated": st.emulated, "estimate": st.seconds, "basis": st.basis}
                              for st in s.option.steps],
                    "alternatives": [
                        {"strategy": r.option.strategy, "node": r.option.node, "estimate_seconds": r.option.estimate,
                         "estimate_basis": r.option.basis, "estimate_parts": dict(r.option.parts), "why_not": r.why}
                        for r in p.rejected if r.option.platform == s.option.platform
                    ],
                    "not_offered": [{"node": node, "why": why} for pl, node, why in planned.not_offered
                                    if pl == s.option.platform],
                }
                for s in p.chosen
            ],
            "unplannable": [{"platform": str(pl), "why": unplannable_reason(pl, planned)} for pl, _ in p.unplannable],
        }
        doc["features"] = [{"node": node, "note": note} for node, note in feature_notes(planned)]
        click.echo(json.dumps(doc, indent=2))
        _fail_unplannable(planned)
        return
    rows = [("PLATFORM", "CHOSEN", "EST", "FINISH", "WHY")]
    for s in p.chosen:
        rows.append((str(s.option.platform), str(s.option), f"{s.option.estimate:.1f}s", f"{s.finish:.1f}s", s.option.why))
        rows.append(("", "", "", "", f"estimate: {s.option.basis}"))
        if s.option.parts:
            rows.append(("", "", "", "", "parts: " + " + ".join(f"{k} {v:.1f}s" for k, v in s.option.parts)))
        for st in s.option.steps:
            where = f"{st.stage} " if st.stage else ""
            rows.append(("", "", "", "", f"  [{where}{st.index}] {st.seconds:.1f}s {st.basis}: {st.text[:60]}"))
        for r in p.rejected:
            if r.option.platform == s.option.platform:
                rows.append(("", f"  not {r.option}", f"{r.option.estimate:.1f}s", "", r.why))
        for pl, node, why in planned.not_offered:
            if pl == s.option.platform:
                rows.append(("", f"  not on {node}", "", "", why))
    click.echo(_table(rows))
    click.echo(f"makespan: {p.makespan:.1f}s ({'exact search' if p.exact else 'greedy schedule'})")
    for node, note in feature_notes(planned):
        click.echo(f"{node}: {note}")
    for pl, _ in p.unplannable:
        click.echo(f"{pl}: CANNOT BUILD: {unplannable_reason(pl, planned)}")
    _fail_unplannable(planned)


def feature_notes(planned) -> list[tuple[str, str]]:
    """(node, note) for what ``plan`` says of the build's features on the chosen nodes: where one
    is degraded (:func:`archfleet.buildcache.notes`) and which platform starts warm from another
    node's child (:func:`archfleet.buildcache.warm_ref`). Nodes rejected for lacking a feature
    are in ``not_offered``."""
    from .buildcache import warm_ref

    chosen = {s.option.node for s in planned.plan.chosen}
    out = [(node, f"degraded: {note}") for node, note in planned.notes if node in chosen]
    request = planned.request
    for s in planned.plan.chosen if request is not None else ():
        facts = planned.facts.get(s.option.node)
        warm = warm_ref(request, s.option.platform, s.option.node, facts.builder if facts else None)
        if warm is not None:
            out.append((s.option.node, f"{s.option.platform} starts warm: cache from {warm.ref} (built on {warm.node})"))
    return out


def _fail_unplannable(planned) -> None:
    """Exit 3 with one stderr line when some platform has no option (what ``build`` says too)."""
    from .pipeline import unplannable_reason

    if planned.plan.unplannable:
        raise EnvironmentProblem("; ".join(unplannable_reason(p, planned) for p, _ in planned.plan.unplannable))


# `archfleet ls`'s CAN column: one word per capability (docs/cli.md)
_FEATURE_WORDS = {"cache_export": "cache", "frontends": "syntax", "link_wildcards": "linkglob"}


@cli.command(name="ls")
@click.option("--engine-cli", envvar="ARCHFLEET_ENGINE_CLI", metavar="PATH", help="Engine CLI for the local node.")
@click.option("--local/--no-local", default=True)
@click.option("--nodes", "nodes_file", metavar="FILE", help="nodes.toml to use.")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True)
def ls_(engine_cli, local, nodes_file, fmt):
    """List build nodes with their native and emulated platforms (like `docker buildx ls`)."""
    from .pipeline import probe

    hooks = _hooks()
    config = _config(hooks, nodes_file, engine_cli, local)
    facts = _run(hooks, lambda session: probe(hooks, config, session))
    if fmt == "json":
        click.echo(json.dumps([
            {"name": f.name, "reachable": f.reachable, "error": f.error, "transport": f.node.transport,
             "engine": f.node.engine, "engine_version": f.engine_version, "rootless": f.rootless,
             "capabilities": attrs.asdict(f.capabilities) if f.capabilities else None,
             "builder": f.builder, "engine_cli": list(f.engine_cli),
             "native": [str(p) for p in f.native], "emulated": [str(p) for p in f.emulated],
             "cpus": f.cpus if f.reachable else None, "memory": f.memory, "load": f.load, "score": f.score,
             "max_builds": f.node.max_builds,
             "busy": list(f.busy), "labels": dict(f.node.labels)}
            for f in facts.values()
        ], indent=2))
        return
    rows = [("NAME", "STATUS", "ENGINE", "BUILDER", "CAN", "CPUS", "SCORE", "MAX", "NATIVE", "EMULATED")]
    for f in facts.values():
        status = "ready" if f.can_build else ("unreachable" if not f.reachable else "no builder")
        if f.can_build and f.busy:
            status += f" ({len(f.busy)} busy)"
        can = ",".join(_FEATURE_WORDS.get(n, n) for n in f.capabilities.names()) if f.capabilities else "-"
        rows.append((f.name, status, f.engine_label, f.builder or "-", can or "-", str(f.cpus) if f.reachable else "-",
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
    _no_run()
    from . import binfmt as bf

    mount = bf.MOUNT
    install_platforms = _platform_list("--install", install) if install and install.strip() != "all" else ()
    uninstall_platforms = _platform_list("--uninstall", uninstall) if uninstall else ()
    for flag, platforms in (("--install", install_platforms), ("--uninstall", uninstall_platforms)):
        for p in platforms:
            if not plat.emulable(p):
                raise UsageError(f"{flag} {p}: QEMU's handlers emulate "
                                 + (f"linux/{p.architecture} only, not the {p.variant} level" if p.qemu_arch
                                    else f"no {p.architecture} CPU"))
    try:
        bf.ensure_mounted(mount)
    except (OSError, subprocess.CalledProcessError) as exc:
        raise EnvironmentProblem(f"cannot mount binfmt_misc at {mount} ({_why(exc)}); run as root") from None
    if install:
        confs = bf.available_confs(bf.CONF_DIRS)
        if not confs:
            raise EnvironmentProblem(f"no QEMU handlers found in {bf.CONF_DIRS[0]}; install qemu-user-static")
        native = {bf.conf_for(p) for p in plat.native_platforms(_platform.machine())}
        if install.strip() == "all":
            wanted = sorted(confs)
        else:
            wanted = []
            for p in install_platforms:
                name = bf.conf_for(p)
                if name in native:
                    continue  # this machine runs it: no handler (Debian ships none for it either)
                if name not in confs:
                    raise EnvironmentProblem(f"--install {p}: qemu-user-static has no {name}.conf in "
                                             f"{bf.CONF_DIRS[0]}")
                wanted.append(name)
        for name in wanted:
            if name in native:
                continue
            try:
                state = bf.register(confs[name], mount)
            except (OSError, ValueError) as exc:
                raise EnvironmentProblem(f"cannot register {name}: {_why(exc)}; run as root") from None
            click.echo(f"{state}: {name}" + (" (now with the fix-binary flag F)" if state == "re-registered" else ""))
    if uninstall:
        for p in uninstall_platforms:
            name = bf.conf_for(p)
            try:
                removed = bf.unregister(name, mount)
            except OSError as exc:
                raise EnvironmentProblem(f"cannot unregister {name}: {_why(exc)}; run as root") from None
            click.echo(f"{'removed' if removed else 'not registered'}: {name}")
    if not install and not uninstall:
        handlers = [h for h in bf.read_handlers(mount) if h.name.startswith("qemu-")]
        for h in handlers:
            note = ""
            if not h.enabled:
                note = " (disabled: not usable)"
            elif not h.usable_in_containers:
                first = h.platforms[0] if h.platforms else None
                note = (" (not usable in containers: no F flag; "
                        + (f"`archfleet binfmt --install {first}` re-registers it with F)" if first else "re-register it with F)"))
            click.echo(f"{h.name}: {'enabled' if h.enabled else 'disabled'} flags={h.flags} -> "
                       f"{','.join(map(str, h.platforms)) or '-'}{note}")
        if not handlers:
            click.echo("no QEMU handlers registered; run `archfleet binfmt --install all`")


def _why(exc: BaseException) -> str:
    """The reason in an OS error without the path (the message names the handler already)."""
    if isinstance(exc, subprocess.CalledProcessError):
        return (exc.stderr or b"").decode(errors="replace").strip() or f"mount exited {exc.returncode}"
    return getattr(exc, "strerror", None) or str(exc)


@cli.command(name="plugins")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True)
def plugins_(fmt):
    """List loaded plugins (built-in and installed), their versions and the hooks each implements."""
    _no_run()
    from . import __version__
    from .manager import BUILTIN_PLUGINS

    pm = _hooks().pm
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
@click.option("--platform", "platform", multiple=True, metavar="P[,P...]",
              help="Platforms to check on each node (default: linux/amd64,arm64,arm/v7,s390x,ppc64le).")
def doctor(registries, insecure_registry, engine_cli, local, nodes_file, platform):
    """Check the engine, BuildKit, QEMU handlers, registries, nodes and each platform on each node; say what to fix."""
    from . import doctor as doc

    for host in registries:
        parse_registry_host(host, what="--registry")
    for host in insecure_registry:
        parse_registry_host(host, what="--insecure-registry")
    platforms = tuple(p for text in platform for p in _platform_list("--platform", text))
    hooks = _hooks()
    config = _config(hooks, nodes_file, engine_cli, local)
    checks = _run(hooks, lambda session: doc.run(hooks, config, session, tuple(registries),
                                                 tuple(insecure_registry), platforms))
    for c in checks:
        click.echo(c.line())
    failed = [c for c in checks if c.status == "FAIL"]
    click.echo(f"{len(checks)} checks, {len(failed)} failed, {sum(c.status == 'warn' for c in checks)} warnings")
    if failed:
        sys.exit(3)


@cli.group(name="server")
def server_():
    """A background process of yours that runs archfleet's commands with everything loaded."""


@server_.command(name="start")
@click.option("--idle", type=click.IntRange(1, 7 * 86400), default=900, show_default=True, metavar="SECONDS",
              help="Stop after this long without a command (at most 7 days).")
def server_start(idle):
    """Start this install's server for this context now (a command starts one once it ends
    unless ARCHFLEET_SERVER is manual or 0)."""
    _no_run()
    from . import server as srv

    try:
        status = srv.start(idle)
    except srv.ServerProblem as exc:
        raise EnvironmentProblem(f"server: {exc}") from None
    word = "already running" if status.get("already") else "started"
    click.echo(f"archfleet server {word} (pid {status['pid']}, stops after {status['idle']:g} s without a command); "
               f"'archfleet server stop' stops it")


@server_.command(name="stop")
def server_stop():
    """Stop this install's servers (every context's) once the commands they run have ended."""
    answers, problem = _servers_asked("stop")
    for status, _ in answers:
        click.echo(f"archfleet server (pid {status['pid']}) stopping"
                   + (f" once its {status['running']} running command(s) end" if status["running"] else ""))
    if problem:
        raise EnvironmentProblem(problem)


@server_.command(name="status")
def server_status():
    """Say which of this install's servers run (exit 1 when none runs for this context)."""
    here = False
    answers, problem = _servers_asked("status")
    for status, mine in answers:
        whose = "this context's" if mine else "another context's (cgroup, limits, namespaces...)"
        if status.get("stopping"):
            click.echo(f"archfleet server (pid {status['pid']}, {whose}) stopping ({status['stopping']}), "
                       f"{status['running']} command(s) still running; new commands run in their own process")
            continue
        here = here or mine
        click.echo(f"archfleet server running: pid {status['pid']}, {whose}, up {time.time() - status['started']:.0f} s, "
                   f"{status['served']} command(s) served, {status['running']} running, "
                   f"stops after {status['idle']:g} s without a command")
    if problem:
        raise EnvironmentProblem(problem)
    if not here:
        sys.exit(1)


def _servers_asked(what: str) -> tuple[list[tuple[dict, bool]], str | None]:
    """Each running server of this install's answer to ``what`` (archfleet.server.ask) and
    whether it is this context's, "none running" said when there is none; and the line for a
    server that took the request and did not answer (the caller says it last: exit 3), or None."""
    _no_run()
    from . import server as srv
    from .serverclient import socket_path, sockets

    mine, answers, problems = socket_path(), [], []
    for path in sockets():
        try:
            status = srv.ask(what, path=path)
        except srv.ServerProblem as exc:
            problems.append(str(exc))
            continue
        if status is not None:
            answers.append((status, path == mine))
    if not answers and not problems:
        from .serverclient import runtime_problem

        problem = runtime_problem()
        click.echo("no archfleet server of this install is running" + (f": {problem}" if problem else ""))
    return answers, f"server: {problems[0]}" if problems else None


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


# What the build command running in this process has published (pipeline.RunState), for the line
# of a Ctrl-C that reaches main() or entrypoint() rather than the command's own handler.
_run_state = None
# Set by entrypoint(): this process ends with the command, so once the command's outcome is
# decided, SIGINT is ignored until the process exits (_hold_sigint_until_exit).
_exit_after_command = False


def _interrupted(exc: BaseException | None) -> str:
    """The line for a Ctrl-C: once a build moved its tags, ``interrupted after the index D was
    pushed to TAG`` (docs/cli.md, exit code 130), whatever the interrupt's own message."""
    if _run_state is not None and _run_state.index_digest:
        return _run_state.interrupted()
    return (str(exc) if exc is not None else "") or "interrupted"


def _hold_sigint_until_exit() -> None:
    """When this process ends with the command (:func:`entrypoint`): from here until it exits a
    Ctrl-C changes nothing, the outcome being decided. SIGINT is ignored, not handled: while the
    interpreter exits it joins threads and runs atexit callbacks (where a KeyboardInterrupt is a
    traceback), then it puts a handled SIGINT back to the default action and tears its modules
    down, and a Ctrl-C then kills the process by signal, after its outcome was said. A Ctrl-C
    already received is first run by the handler this one replaces (``signal.signal`` does so);
    it came too late to change the outcome: dropped. ``main()`` called in-process leaves SIGINT
    to its caller."""
    if not _exit_after_command or threading.current_thread() is not threading.main_thread():
        return
    while True:
        try:
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            if signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:
                signal.signal(signal.SIGTERM, signal.SIG_IGN)  # the same for a SIGTERM
            return
        except KeyboardInterrupt:
            continue


def main(argv=None) -> int:
    """Run the ``archfleet`` command with ``argv`` (default: ``sys.argv[1:]``); return its exit code. Every error is one line on stderr (``archfleet: error: ...``) and a documented code (:mod:`archfleet.errors`: 2 bad input, 3 environment, 1 build, 70 a bug, 130 interrupted); ``ARCHFLEET_DEBUG=1`` adds the traceback."""
    global _run_state
    _run_state = None
    debug = os.environ.get("ARCHFLEET_DEBUG") == "1"
    try:
        cli.main(args=argv, prog_name="archfleet", standalone_mode=False)
        return 0
    except click.exceptions.UsageError as exc:
        # the help to read: "archfleet build --help" for a command's flags, "archfleet --help" for
        # the command's name or a flag given before it
        hint = f" (see {exc.ctx.command_path} --help)" if exc.ctx else ""
        _say(exc.format_message() + hint)
        return 2
    except click.exceptions.Abort as exc:  # click's word for a KeyboardInterrupt that reached it
        _say(_interrupted(exc.__cause__ if isinstance(exc.__cause__, KeyboardInterrupt) else None))
        return 130
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except ArchfleetError as exc:
        _say(str(exc))
        if debug and not isinstance(exc, Interrupted):  # Ctrl-C is no bug: no traceback
            raise
        return exc.exit_code
    except KeyboardInterrupt as exc:  # outside a command's run (commands raise Interrupted)
        _say(_interrupted(exc))
        return 130
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 1
    except Exception as exc:
        if debug:
            raise
        _say(f"internal error: {type(exc).__name__}: {exc} (ARCHFLEET_DEBUG=1 shows the traceback)")
        return 70


def _say(message: str) -> None:
    # one line whatever a value in the message holds (click quotes an unknown option as given)
    message = message.replace("\r", "\\r").replace("\n", "\\n")
    sys.stderr.write(f"archfleet: error: {message}\n")


def _stacks_on_sigusr1() -> None:
    """``kill -USR1 PID`` of a running archfleet writes every thread's stack to its stderr
    (:mod:`faulthandler`, at once, even with the main thread stuck) and then every asyncio
    task's (where each awaits), and lets it go on: what a build that seems stuck is waiting on,
    without stopping it. The tests send it to a process that did not end in time before killing
    it."""
    import faulthandler
    import signal

    def tasks(signum, frame) -> None:
        # then, on the main thread at its next bytecode (a waiting event loop wakes for it):
        # each asyncio task and where it awaits, which the threads' stacks do not show
        import asyncio

        try:
            running = asyncio.all_tasks(asyncio.get_running_loop())
        except RuntimeError:  # no event loop running now
            return
        for task in running:
            sys.stderr.write(f"asyncio task {task.get_name()}:\n")
            task.print_stack(file=sys.stderr)
        sys.stderr.flush()

    try:
        signal.signal(signal.SIGUSR1, tasks)
        faulthandler.register(signal.SIGUSR1, all_threads=True, chain=True)
    except (AttributeError, ValueError, RuntimeError, OSError):  # no SIGUSR1, or stderr is gone
        pass


def entrypoint() -> None:
    """The console script (pyproject.toml's ``archfleet``): :func:`main`, then exit with its code.

    The rule: from the moment the tags start moving until the process exits, a Ctrl-C never
    kills the process by signal, and the exit code and the lines tell the truth (exit 0 with the
    digest said, or 130 with ``interrupted after the index D was pushed to TAG``). The build
    command ignores SIGINT once its outcome is decided (:func:`_hold_sigint_until_exit`); so does
    this function once main() returned, for every command: a Ctrl-C while the interpreter shuts
    down (joining threads, tearing modules down) must not turn the outcome into death by SIGINT."""
    global _exit_after_command
    _exit_after_command = True
    _stacks_on_sigusr1()
    code = None
    try:
        code = main()
        _hold_sigint_until_exit()
    except KeyboardInterrupt as exc:  # in the last instants of main()
        _hold_sigint_until_exit()
        if code is None:  # its outcome not said
            _say(_interrupted(exc))
            code = 130
    # what the run made is not looked through once more while the interpreter exits: its final
    # collection took ~5 ms of a one-platform build's exit (issue 17)
    gc.freeze()
    sys.exit(code)


if __name__ == "__main__":
    entrypoint()
