"""Build secrets (``--secret``) and SSH forwarding (``--ssh``): the flags, what the Dockerfile asks
for, and how one build on one node gets them without a value touching an argv, an environment
or a disk that outlives the build's start.

The flags, in buildx's syntax (:func:`parse_secret`, :func:`parse_ssh`), checked in the CLI's one
pass (one line, exit 2, never echoing a value):

- ``--secret id=ID[,src=PATH|,env=VAR]`` (also ``type=file|env``, ``source=``): the value is the
  file ``PATH`` or the environment variable ``VAR``; with neither, BuildKit's rule: the variable
  named ``ID`` when it is set, else the file named ``ID``. Unknown keys, a missing file, an unset
  variable, a duplicate id, a value over BuildKit's 500 KiB limit are refused.
- ``--ssh default|ID[=PATH[,PATH...]]``: ``default`` (or an ``ID`` alone) is the user's agent,
  ``$SSH_AUTH_SOCK``, which must be set; ``PATH`` is one agent socket, or private key files.
- The Dockerfile's ``RUN --mount=type=secret|ssh`` mounts are checked against them
  (:func:`check_mounts`), as BuildKit treats them: a mount with ``required=true`` whose id no
  flag gives is refused before anything is built (BuildKit fails the step: ``secret X: not
  found``); a mount that is not required and not given mounts nothing (BuildKit skips it).

How a build gets them (:func:`mounted`, used by every engine adapter):

- **This machine** (the ``local`` node): a ``src=`` secret and ``--ssh`` paths are given to the
  engine CLI as they are (``--secret id=ID,src=PATH``, ``--ssh ID=PATH``): the CLI reads the
  user's own files and agent.
- **Every value archfleet has to hand over** (an ``env=`` secret here; every secret and every
  ssh key file on an SSH node) travels on the engine CLI's standard input, ahead of nothing
  else, into :data:`MOUNT_SCRIPT`: a fixed ``sh`` script that writes each value to a file in a
  fresh private (0700) directory on a tmpfs (``$XDG_RUNTIME_DIR``, else ``/dev/shm``; no tmpfs:
  it refuses, exit 125), mode 0600, opens each file as a file descriptor (3, 4, ... 9),
  **removes the directory**, and only then ``exec``\\ s the CLI with ``--secret
  id=ID,src=/dev/fd/N``. The CLI reads ``/dev/fd/N`` whenever BuildKit asks (Linux reopens the
  deleted file through the descriptor). So the value is in no argv and no environment, and on
  no disk once the CLI starts; the directory goes when the script ends, whatever ends it (a
  trap), and a build killed later leaves nothing behind. At most :data:`MAX_HANDED` values per
  build (descriptors 3-9, what every POSIX ``sh`` can open).
- **An agent on an SSH node**: the user's agent socket is forwarded over the node's existing
  SSH connection to a socket in a private directory on the node, for that build only
  (``Transport.agent_socket``), and the CLI gets ``--ssh ID=<that socket>``; the forward is
  closed and the directory removed when the build ends.
"""

from __future__ import annotations

import contextlib
import os
import re
import stat
from pathlib import Path
from typing import AsyncIterator, Sequence

import attrs

from . import flagfields
from .errors import EnvironmentProblem, UsageError
from .model import BuildRequest, Secret, SshAgent

# what a CLI reading --secret's fields would split a path on: docker reads them as CSV, podman
# splits on commas; such a path is handed over as a value instead of being named
_SPLITS = re.compile(r'[,"\n\r]')
MAX_SECRET = 500 * 1024  # bytes: BuildKit's limit on one secret (secrets.MaxSecretSize)
FIRST_FD = 3
MAX_HANDED = 7  # values handed over on stdin per build: descriptors 3..9
_ID = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")
_TRUE = {"1", "t", "T", "true", "TRUE", "True"}
_FALSE = {"0", "f", "F", "false", "FALSE", "False"}

# The values on stdin: "<length>\n<bytes>" each, in order; then the CLI's argv. See the module doc.
MOUNT_SCRIPT = r"""
umask 077
base=${XDG_RUNTIME_DIR:-}
{ [ -n "$base" ] && [ -d "$base" ] && [ -w "$base" ]; } || base=/dev/shm
{ [ -d "$base" ] && [ -w "$base" ]; } || {
  echo "archfleet: no tmpfs for the build's secrets (neither \$XDG_RUNTIME_DIR nor /dev/shm is writable)" >&2
  exit 125; }
d=$(mktemp -d "$base/archfleet-secrets.XXXXXXXX") || {
  echo "archfleet: cannot make a private directory in $base" >&2; exit 125; }
trap 'rm -rf "$d"' EXIT
trap 'exit 129' HUP
trap 'exit 130' INT
trap 'exit 143' TERM
n=$1
shift
i=0
while [ "$i" -lt "$n" ]; do
  IFS= read -r len || { echo "archfleet: the build's secrets were cut short" >&2; exit 125; }
  case $len in ''|*[!0-9]*) echo "archfleet: the build's secrets were garbled" >&2; exit 125;; esac
  : > "$d/$i"
  if [ "$len" -gt 0 ]; then dd bs=1 count="$len" of="$d/$i" 2>/dev/null; fi
  [ "$(($(wc -c < "$d/$i")))" -eq "$len" ] || { echo "archfleet: the build's secrets were cut short" >&2; exit 125; }
  i=$((i + 1))
done
i=0
while [ "$i" -lt "$n" ]; do
  eval "exec $((i + 3))<\"\$d/$i\"" || exit 125
  i=$((i + 1))
done
rm -rf "$d"
trap - EXIT HUP INT TERM
exec "$@"
"""
SCRIPT_FAILED = 125  # MOUNT_SCRIPT's exit status when it could not hand the values over


# -- the flags ------------------------------------------------------------------------------------

def _check_id(flag: str, value: str) -> str:
    if not _ID.fullmatch(value):
        raise UsageError(f"{flag}: id {value!r} must be letters, digits, '_', '.' or '-'")
    return value


def parse_secret(text: str, environ=None) -> Secret:
    """One ``--secret`` value (module doc) -> :class:`Secret`, its source checked (the file is
    readable and not over :data:`MAX_SECRET`; the variable is set). Raises :class:`UsageError`
    naming the flag by its id, never a value."""
    environ = os.environ if environ is None else environ
    flag = "--secret"
    kind = ident = src = env = None
    for key, value in flagfields.fields(flag, text):
        if key == "type":
            if value not in ("file", "env"):
                raise UsageError(f"{flag}: type {value!r} is not file or env")
            kind = value
        elif key == "id":
            ident = value
        elif key in ("src", "source"):
            src = value
        elif key == "env":
            env = value
        else:
            raise UsageError(f"{flag}: unknown key {key!r} (id, src, env, type)")
    if not ident:
        raise UsageError(f"{flag}: name the secret with id=ID")
    flag = f"--secret id={_check_id(flag, ident)}"
    if kind == "env" and env is None:
        env, src = src, None
    if src is not None and env is not None:
        raise UsageError(f"{flag}: give src= or env=, not both")
    if src is None and env is None:
        if ident in environ:  # BuildKit's rule (secretsprovider.NewStore)
            env = ident
        else:
            src = ident
    if env is not None:
        if not env:
            raise UsageError(f"{flag}: env= names no variable")
        if env not in environ:
            raise UsageError(f"{flag}: ${env} is not set; set it, or give src=PATH")
        if len(os.fsencode(environ[env])) > MAX_SECRET:
            raise UsageError(f"{flag}: ${env} is larger than BuildKit's {MAX_SECRET // 1024} KiB limit for a secret")
        return Secret(ident, env=env)
    path = Path(src).expanduser()
    try:
        st = os.stat(path)
    except OSError as exc:
        raise UsageError(f"{flag}: cannot read {src!r}: {exc.strerror}") from None
    if stat.S_ISDIR(st.st_mode):
        raise UsageError(f"{flag}: {src!r} is a directory; name a file")
    if not stat.S_ISREG(st.st_mode):
        raise UsageError(f"{flag}: {src!r} is not a regular file (a pipe or device can be read once, and each "
                         "platform's build reads the secret); save it to a file only you can read, or use env=VAR")
    if not os.access(path, os.R_OK):
        raise UsageError(f"{flag}: {src!r} is not readable")
    if st.st_size > MAX_SECRET:
        raise UsageError(f"{flag}: {src!r} is larger than BuildKit's {MAX_SECRET // 1024} KiB limit for a secret")
    return Secret(ident, src=str(path.absolute()))


def parse_ssh(text: str, environ=None) -> SshAgent:
    """One ``--ssh`` value (module doc) -> :class:`SshAgent`: ``default`` or ``ID`` alone is the
    agent at ``$SSH_AUTH_SOCK`` (which must be set and be a socket); ``ID=PATH[,PATH]`` one
    agent socket or readable key files. Raises :class:`UsageError`."""
    environ = os.environ if environ is None else environ
    ident, eq, rest = text.partition("=")
    if not ident.strip():
        raise UsageError(f"--ssh {text!r}: name an id: default, ID (the agent at $SSH_AUTH_SOCK) or ID=PATH")
    flag = f"--ssh {_check_id('--ssh', ident.strip())}"
    ident = ident.strip()
    paths = [p for p in rest.split(",") if p] if eq else []
    if eq and not paths:
        raise UsageError(f"{flag}: name an agent socket or key files after '='")
    if not paths:
        sock = environ.get("SSH_AUTH_SOCK", "")
        if not sock:
            raise UsageError(f"{flag}: $SSH_AUTH_SOCK is not set (start ssh-agent), or give {ident}=PATH to a key")
        paths = [sock]
    resolved = []
    kinds = []
    for p in paths:
        path = Path(p).expanduser()
        try:
            st = os.stat(path)
        except OSError as exc:
            raise UsageError(f"{flag}: cannot use {p!r}: {exc.strerror}") from None
        if stat.S_ISSOCK(st.st_mode):
            kinds.append("socket")
        elif not stat.S_ISREG(st.st_mode) or not os.access(path, os.R_OK):
            raise UsageError(f"{flag}: {p!r} is neither an agent socket nor a readable key file")
        else:
            if st.st_size > MAX_SECRET:
                raise UsageError(f"{flag}: {p!r} is too large to be a private key")
            _check_key(flag, p, path)
            kinds.append("key")
        resolved.append(str(path.absolute()))
    if "socket" in kinds and len(resolved) > 1:
        raise UsageError(f"{flag}: an agent socket is given alone (BuildKit reads several paths as key files)")
    return SshAgent(ident, tuple(resolved), agent=kinds == ["socket"])


def _check_key(flag: str, shown: str, path: Path) -> None:
    """Refuse a key file BuildKit's ssh forwarding cannot use: not an unencrypted private key
    (BuildKit loads key files without asking for a passphrase). Read with ``cryptography``
    (OpenSSH's own format, then PEM/PKCS#8: the formats ``ssh-keygen`` writes); SSH itself stays
    in the ssh plugin."""
    from cryptography.hazmat.primitives import serialization  # only for --ssh key files

    try:
        data = path.read_bytes()
    except OSError as exc:
        raise UsageError(f"{flag}: cannot read {shown!r}: {exc.strerror}") from None
    for load in (serialization.load_ssh_private_key, serialization.load_pem_private_key):
        try:
            load(data, password=None)
            return
        except TypeError:  # "Key is password-protected, but password was not provided"
            raise UsageError(f"{flag}: {shown!r} is passphrase-protected, which BuildKit cannot use; add it to "
                             "ssh-agent (ssh-add) and give --ssh default") from None
        except Exception:  # ValueError, UnsupportedAlgorithm: not this format, or not a key at all
            continue
    raise UsageError(f"{flag}: {shown!r} is not a private key (give the key file, not the .pub, or an "
                     "agent socket)")


def handed_values(secrets: Sequence[Secret], ssh: Sequence[SshAgent]) -> int:
    """How many values a build on an SSH node hands over on stdin: every secret, every key file."""
    return len(secrets) + sum(len(a.paths) for a in ssh if not a.agent)


def check_flags(secrets: Sequence[Secret], ssh: Sequence[SshAgent]) -> list[str]:
    """The problems of the flags together: a duplicate id, more values than a build can hand over
    (:data:`MAX_HANDED`). One line each, for the CLI's one pass."""
    problems = []
    for what, ids in (("--secret", [s.id for s in secrets]), ("--ssh", [a.id for a in ssh])):
        dup = sorted({i for i in ids if ids.count(i) > 1})
        if dup:
            problems.append(f"{what} id={dup[0]}: given twice; give each id once")
    if handed_values(secrets, ssh) > MAX_HANDED:
        problems.append(f"--secret/--ssh: at most {MAX_HANDED} secrets and ssh key files per build (each is a "
                        "file descriptor of the build's CLI, 3-9); combine some, or use an agent for the keys")
    return problems


def check_mounts(request: BuildRequest) -> list[str]:
    """Each Dockerfile's ``RUN --mount=type=secret|ssh,required=true`` against the flags (module
    doc): one problem per required mount whose id no ``--secret``/``--ssh`` gives."""
    from .engines import mounts

    secret_ids = {s.id for s in request.secrets}
    ssh_ids = {a.id for a in request.ssh}
    problems = []
    for path, platforms in request.by_dockerfile():
        for m in mounts(request.for_platform(platforms[0])):
            if not m.required:
                continue
            if m.kind == "secret" and m.id not in secret_ids:
                problems.append(f"{m.where}: secret {m.id!r} is required and not given; add --secret "
                                f"id={m.id},src=PATH (or env=VAR)")
            elif m.kind == "ssh" and m.id not in ssh_ids:
                problems.append(f"{m.where}: ssh {m.id!r} is required and not given; add --ssh "
                                + ("default" if m.id == "default" else f"{m.id}=PATH"))
    return problems


# -- the values -----------------------------------------------------------------------------------

_HELD: dict[str, bytes] = {}  # env= secrets taken out of this process's environment (hold_env)
# variables every process needs: left in place even when a secret names one
_KEEP = {"PATH", "HOME", "USER", "LOGNAME", "SHELL", "LANG", "TERM", "PWD", "TMPDIR", "SSH_AUTH_SOCK"}


def hold_env(secrets: Sequence[Secret]) -> None:
    """Take the variable of each ``env=`` secret out of this process's environment, its value
    kept here for :func:`value`: no process archfleet starts (engine CLIs, ssh, probes) inherits
    it. The build command calls it once the flags are checked. Variables in :data:`_KEEP` stay."""
    for s in secrets:
        if s.env is None or s.env in _HELD or s.env in _KEEP or s.env.startswith(("DOCKER_", "XDG_", "ARCHFLEET_")):
            continue
        data = os.environb.pop(os.fsencode(s.env), None)
        if data is not None:
            _HELD[s.env] = data


def value(secret: Secret) -> bytes:
    """The secret's value, read now (blocking: a file). Raises :class:`UsageError` when its file
    cannot be read or its variable is gone (the flag was checked when archfleet started)."""
    if secret.env is not None:
        data = _HELD.get(secret.env)
        if data is None:
            data = os.environb.get(os.fsencode(secret.env))
        if data is None:
            raise UsageError(f"--secret id={secret.id}: ${secret.env} is no longer set")
        return data
    try:
        with open(secret.src, "rb") as f:
            data = f.read(MAX_SECRET + 1)
    except OSError as exc:
        raise UsageError(f"--secret id={secret.id}: cannot read {secret.src!r}: {exc.strerror}") from None
    if len(data) > MAX_SECRET:
        raise UsageError(f"--secret id={secret.id}: {secret.src!r} is larger than BuildKit's "
                         f"{MAX_SECRET // 1024} KiB limit for a secret")
    return data


def _key(agent: SshAgent, path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read(MAX_SECRET)
    except OSError as exc:
        raise UsageError(f"--ssh {agent.id}: cannot read {path!r}: {exc.strerror}") from None


@attrs.frozen
class Mounted:
    """What one build's engine CLI needs for its secrets and ssh on one node (:func:`mounted`):
    ``flags`` (``--secret``/``--ssh`` words, no value in them), ``wrapper`` (the argv prefix
    that opens the handed-over values as descriptors: :data:`MOUNT_SCRIPT`; empty when nothing is
    handed over) and ``stdin`` (the values, framed; None when nothing is). ``stdin`` never
    appears in a repr."""

    flags: tuple[str, ...] = ()
    wrapper: tuple[str, ...] = ()
    stdin: bytes | None = attrs.field(default=None, repr=False)

    def argv(self, cli_argv: Sequence[str]) -> list[str]:
        """The command to run: ``cli_argv`` behind the wrapper (when there is one)."""
        return [*self.wrapper, *cli_argv]


@contextlib.asynccontextmanager
async def mounted(transport, request: BuildRequest, *, local: bool) -> AsyncIterator[Mounted]:
    """The secrets and ssh of ``request`` for one build through ``transport`` (module doc):
    ``local`` is True on this machine, whose files the CLI can read itself. Agent sockets on a
    remote node are forwarded for the block's duration (``transport.agent_socket``). Raises
    :class:`UsageError` when a value cannot be read, :class:`EnvironmentProblem` when the node's
    transport cannot forward an agent."""
    import asyncio

    if not request.secrets and not request.ssh:
        yield Mounted()
        return
    values: list[bytes] = []
    flags: list[str] = []

    def hand(data: bytes) -> str:
        values.append(data)
        return f"/dev/fd/{FIRST_FD + len(values) - 1}"

    for s in request.secrets:
        if local and s.src is not None and not _SPLITS.search(s.src):
            flags += ["--secret", f"id={s.id},src={s.src}"]
        else:  # remote, env=, or a path the CLI would split (podman splits on commas, unquoted)
            flags += ["--secret", f"id={s.id},src={hand(await asyncio.to_thread(value, s))}"]
    async with contextlib.AsyncExitStack() as stack:
        for a in request.ssh:
            if local:
                flags += ["--ssh", f"{a.id}={','.join(a.paths)}"]
            elif a.agent:
                forward = getattr(transport, "agent_socket", None)
                if forward is None:
                    raise EnvironmentProblem(f"--ssh {a.id}: node {transport.node}'s transport cannot forward an "
                                             "ssh agent; give key files (--ssh ID=KEY) instead")
                remote = await stack.enter_async_context(forward(a.paths[0]))
                flags += ["--ssh", f"{a.id}={remote}"]
            else:
                keys = [hand(await asyncio.to_thread(_key, a, p)) for p in a.paths]
                flags += ["--ssh", f"{a.id}={','.join(keys)}"]
        if len(values) > MAX_HANDED:
            raise UsageError(f"--secret/--ssh: at most {MAX_HANDED} secrets and ssh key files per build")
        if not values:
            yield Mounted(tuple(flags))
            return
        stdin = b"".join(b"%d\n" % len(v) + v for v in values)
        yield Mounted(tuple(flags), ("sh", "-c", MOUNT_SCRIPT, "sh", str(len(values))), stdin)


def script_failure(done) -> str | None:
    """Why a build run through :data:`MOUNT_SCRIPT` failed before the CLI started (exit
    :data:`SCRIPT_FAILED` with the script's own ``archfleet:`` line last): the node could not take
    the values (no tmpfs, a cut-off stream). None otherwise."""
    if done.returncode == SCRIPT_FAILED and done.tail and done.tail[-1].startswith("archfleet: "):
        return done.tail[-1].removeprefix("archfleet: ")
    return None
