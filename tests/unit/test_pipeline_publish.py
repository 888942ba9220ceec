"""The pipeline's verify and publish steps: --allow-partial leaves a child that fails verification
out; one line per failing platform with the first failure's exit code; Ctrl-C before the index
push leaves the tags untouched, during it the push finishes and the run says so."""

from __future__ import annotations

import asyncio
import os
import signal

import pytest

from archfleet import index as index_mod
from archfleet import pipeline
from archfleet.errors import (BuildFailed, Interrupted, PlatformsFailed, RegistryError, RegistryRefused,
                              VerificationFailed)
from archfleet.executor import Failure
from archfleet.model import ChildImage, PlatformResult

from stubs import AMD, ARM, S390, option

DIGEST = "sha256:" + "cd" * 32


def results(*platforms):
    return [PlatformResult(p, option(p, "n1"), 1.0, ref=f"reg/app@{DIGEST}", digest=DIGEST) for p in platforms]


def fake_verify(monkeypatch, bad: dict):
    async def verify_child(client, ref, platform, scans=None):
        if platform in bad:
            raise bad[platform]
        return ChildImage(platform, DIGEST, "application/vnd.docker.distribution.manifest.v2+json", 100)
    monkeypatch.setattr(index_mod, "verify_child", verify_child)


WRONG = VerificationFailed("requested linux/arm64 but the image pushed for it is linux/amd64 (reg/app@sha256:cd..)")


def test_allow_partial_leaves_a_child_failing_verification_out(monkeypatch):
    fake_verify(monkeypatch, {ARM: WRONG})
    children, rejected = asyncio.run(pipeline.verify(None, results(AMD, ARM, S390), allow_partial=True))
    assert [c.platform for c in children] == [AMD, S390]
    assert [(f.platform, f.error) for f in rejected] == [(ARM, WRONG)]


def test_without_allow_partial_every_child_failing_verification_is_named_once(monkeypatch):
    other = VerificationFailed("requested linux/s390x but the image pushed for it runs /bin/uname built for linux/amd64")
    fake_verify(monkeypatch, {ARM: WRONG, S390: other})
    err = pytest.raises(PlatformsFailed, asyncio.run,
                        pipeline.verify(None, results(AMD, ARM, S390), allow_partial=False)).value
    assert str(err) == (f"linux/arm64 failed on stub@n1: {WRONG}; linux/s390x failed on stub@n1: {other}; "
                        "nothing was pushed to the tags")
    assert err.exit_code == 1


def test_a_registry_error_while_verifying_is_raised_once_as_it_is(monkeypatch):
    refused = RegistryRefused("registry reg refused the credentials; run `docker login reg`", status=401)
    fake_verify(monkeypatch, {AMD: refused, ARM: refused})
    with pytest.raises(RegistryRefused) as info:
        asyncio.run(pipeline.verify(None, results(AMD, ARM), allow_partial=True))
    assert info.value is refused and info.value.exit_code == 3


def test_the_final_error_keeps_the_first_failures_exit_code():
    refused = RegistryRefused("push of reg/app:1-linux-amd64 refused: denied; run `docker login reg`")
    err = pipeline.failed([Failure(AMD, option(AMD, "n1"), refused),
                           Failure(ARM, option(ARM, "n2"), BuildFailed("build failed: x"))], pushed_nothing=True)
    assert err.exit_code == 3
    assert str(err) == ("linux/amd64 failed on stub@n1: push of reg/app:1-linux-amd64 refused: denied; run "
                        "`docker login reg`; linux/arm64 failed on stub@n2: build failed: x; nothing was pushed to the tags")


# --- Ctrl-C around the index push ---------------------------------------------------------

def publish(push, before=None):
    """The pipeline's publish step as pipeline.build runs it, under asyncio.run (which turns the
    first SIGINT into cancelling the run)."""
    async def main():
        if before:
            await before()
        with pipeline.hold_interrupts("the index was being pushed to reg/app:1") as held:
            await asyncio.sleep(0)
            digest = await push()
        if held.interrupted:
            raise Interrupted(f"interrupted after the index {digest} was pushed to reg/app:1")
        return digest
    return asyncio.run(main())


def test_ctrl_c_during_the_index_push_finishes_it_and_says_it_was_published():
    moved = []

    async def push():
        os.kill(os.getpid(), signal.SIGINT)  # the user presses Ctrl-C while the PUT is in flight
        await asyncio.sleep(0.05)
        moved.append("reg/app:1")
        return DIGEST

    with pytest.raises(Interrupted) as info:
        publish(push)
    assert moved == ["reg/app:1"]
    assert str(info.value) == f"interrupted after the index {DIGEST} was pushed to reg/app:1"
    assert info.value.exit_code == 130
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # restored


def test_ctrl_c_before_the_index_push_leaves_the_tags_untouched():
    moved = []

    async def verifying():
        os.kill(os.getpid(), signal.SIGINT)  # pressed while verifying: the run is cancelled
        await asyncio.sleep(0.05)

    async def push():
        moved.append("reg/app:1")
        return DIGEST

    with pytest.raises(KeyboardInterrupt) as info:
        publish(push, before=verifying)
    assert moved == [] and str(info.value) == ""


def test_ctrl_c_that_lands_just_before_the_hold_is_honoured_before_any_put():
    moved = []

    async def verified():
        # SIGINT arrives while the last verification's answer is processed, without an await
        # after it: the cancellation is still pending when the hold starts
        os.kill(os.getpid(), signal.SIGINT)

    async def push():
        moved.append("reg/app:1")
        return DIGEST

    with pytest.raises(KeyboardInterrupt):
        publish(push, before=verified)
    assert moved == []


def test_a_second_ctrl_c_stops_at_once_and_says_the_tags_may_have_moved():
    async def push():
        os.kill(os.getpid(), signal.SIGINT)
        await asyncio.sleep(0.01)
        os.kill(os.getpid(), signal.SIGINT)
        await asyncio.sleep(5)
        return DIGEST

    with pytest.raises(KeyboardInterrupt) as info:
        publish(push)
    assert str(info.value) == ("interrupted while the index was being pushed to reg/app:1: "
                               "the tags may already point at the new index")


def test_no_hold_when_sigint_is_ignored():
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with pipeline.hold_interrupts("x") as held:
            assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
        assert not held.interrupted
    finally:
        signal.signal(signal.SIGINT, previous)
