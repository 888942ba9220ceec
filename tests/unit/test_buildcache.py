"""--cache-from / --cache-to and the cross-node warm cache (archfleet.buildcache): buildx's
syntax, per-platform refs, what each engine CLI gets, and what plan says a node cannot do."""

from __future__ import annotations

from pathlib import Path

import attrs
import pytest

from archfleet.buildcache import cache_argv, notes, parse_cache, warm_ref
from archfleet.engines import lacking, needs
from archfleet.errors import UsageError
from archfleet.model import BuildRequest, CacheSpec, Capabilities, NodeFacts, NodeSpec, WarmSource
from archfleet.platforms import parse as P

ARM = P("linux/arm64")


def _request(tmp_path: Path, **kw) -> BuildRequest:
    (tmp_path / "Dockerfile").write_text("FROM scratch\n")
    return BuildRequest(context=tmp_path, dockerfile=tmp_path / "Dockerfile", platforms=(P("linux/amd64"), ARM), **kw)


def test_syntax_is_buildx_s_and_refs_get_the_platform_suffix():
    spec = parse_cache("--cache-to", "type=registry,ref=reg:5000/app:cache,mode=max")
    assert spec == CacheSpec("registry", "reg:5000/app:cache", "max")
    assert spec.ref_for(ARM) == "reg:5000/app:cache-linux-arm64"
    assert parse_cache("--cache-from", "reg:5000/app").ref_for(P("linux/arm/v7")) == "reg:5000/app:latest-linux-arm-v7"
    assert parse_cache("--cache-to", "type=inline") == CacheSpec("inline")


@pytest.mark.parametrize("flag, text, says", [
    ("--cache-to", "type=local,dest=/tmp/c", "not one archfleet can share across nodes"),
    ("--cache-from", "type=gha", "not one archfleet can share"),
    ("--cache-to", "type=registry,ref=r/a:c,mode=all", "mode 'all' is not min or max"),
    ("--cache-to", "type=registry,ref=r/a:c,compression=zstd", "unknown key 'compression'"),
    ("--cache-from", "type=inline", "an inline cache is read from an image"),
    ("--cache-to", "type=registry", "name the cache image with ref=REF"),
])
def test_bad_cache_flags_are_one_line(flag, text, says):
    with pytest.raises(UsageError, match=says):
        parse_cache(flag, text)


def test_docker_20_10_without_buildx_reads_refs_and_writes_inline_buildx_exports_per_platform(tmp_path):
    """Docker < 23's BuildKit CLI: --cache-from REF only, the cache written inline
    (BUILDKIT_INLINE_CACHE=1); buildx: type=registry both ways, the platform's own ref."""
    request = _request(tmp_path, push=True, tags=("r:5000/app:1",),
                       cache_from=(CacheSpec("registry", "r:5000/app:cache"),),
                       cache_to=(CacheSpec("registry", "r:5000/app:cache", "max"),))
    argv, args = cache_argv("buildkit", request, ARM, "r:5000/app@sha256:" + "a" * 64)
    assert argv == ["--cache-from", "r:5000/app:cache-linux-arm64", "--cache-from", "r:5000/app:cache",
                    "--cache-from", "r:5000/app@sha256:" + "a" * 64]
    assert args == [("BUILDKIT_INLINE_CACHE", "1")]
    argv, _ = cache_argv("buildx", request, ARM)
    assert argv[-2:] == ["--cache-to", "type=registry,ref=r:5000/app:cache-linux-arm64,mode=max"]
    assert cache_argv("buildah", request, ARM) == ([], [])  # podman: no BuildKit cache
    assert cache_argv("buildkit", attrs.evolve(request, no_cache=True), ARM) == ([], [])


def test_mode_max_rejects_an_inline_only_node_mode_min_is_degraded_and_said(tmp_path):
    """A node without a registry cache export is not offered mode=max (plan says why), and
    mode=min there is the inline cache: plan says so, never silently."""
    from archfleet.engine import capabilities
    from archfleet.engines import why_lacking

    def node(builder, engine="docker", version="20.10.24"):
        caps = capabilities(builder, version) if engine == "docker" else Capabilities(secrets=True, ssh=True)
        return NodeFacts(NodeSpec("n", transport="stub", engine=engine), True, native=(ARM,), builder=builder,
                         engine_cli=(engine,), engine_version=version, capabilities=caps)

    maxed = _request(tmp_path, push=True, cache_to=(CacheSpec("registry", "r/app:c", "max"),))
    old = node("buildkit")
    missing = lacking(old, needs(maxed))
    assert [n.feature for n in missing] == ["cache_export"]
    assert "--cache-to type=registry,ref=r/app:c,mode=max" in why_lacking(old, missing)
    assert lacking(node("buildx", version="24.0.7"), needs(maxed)) == ()
    minimal = _request(tmp_path, push=True, cache_to=(CacheSpec("registry", "r/app:c"),))
    assert lacking(old, needs(minimal)) == ()
    (said,) = notes(minimal, old)
    assert said.startswith("--cache-to type=registry,ref=r/app:c: inline cache (mode=min) in the pushed child")
    (said,) = notes(minimal, node("buildah", "podman", "4.3.1"))
    assert "does not read or write BuildKit caches" in said and "not used there" in said


def test_warm_start_only_on_another_buildkit_node(tmp_path):
    warm = WarmSource(ARM, "n1", "r/app@sha256:" + "b" * 64)
    request = _request(tmp_path, warm=(warm,))
    assert warm_ref(request, ARM, "n2", "buildkit") == warm
    assert warm_ref(request, ARM, "n1", "buildkit") is None  # its own cache is already there
    assert warm_ref(request, ARM, "n2", "buildah") is None  # podman reads no BuildKit cache
    assert warm_ref(attrs.evolve(request, no_cache=True), ARM, "n2", "buildkit") is None


def test_the_last_child_is_known_under_no_cache_for_the_push_though_no_build_reads_it(tmp_path):
    """Rule: --no-cache keeps BuildKit from reading any cache (warm_ref: none), but the platform's
    last child is still where the push finds layers built again the same (found by the
    fresh-user helper: --no-cache compressed a 20 MB unchanged layer again)."""
    from archfleet.buildcache import warm_sources

    class View:
        def last_pushed(self, platform):
            return ("n1", "r/app@sha256:" + "c" * 64)

    request = attrs.evolve(_request(tmp_path), no_cache=True)
    (warm,) = warm_sources(request, {ARM: View()})
    assert (warm.platform, warm.node, warm.ref) == (ARM, "n1", "r/app@sha256:" + "c" * 64)
    assert warm_ref(attrs.evolve(request, warm=(warm,)), ARM, "n2", "buildkit") is None
