"""wire.command: the centre's signed command and the kiosk's signed result, and every way one
must be refused (hypothesis for the bytes)."""

from __future__ import annotations

import datetime as dt
import json
import struct

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from wire.ack import AckResult, AckStatus, sign_ack
from wire.command import (
    MAX_TTL_S,
    CommandError,
    CommandResult,
    check_args,
    sign_command,
    sign_result,
    verify_command,
    verify_result,
)

CENTRE = Ed25519PrivateKey.generate()
KIOSK_KEY = Ed25519PrivateKey.generate()
NOW = dt.datetime(2026, 12, 1, 10, 0, tzinfo=dt.UTC)


def reason_of(payload: bytes, **kw: object) -> str:
    with pytest.raises(CommandError) as caught:
        verify_command(payload, **{"keys": [CENTRE.public_key()], "kiosk": "320715-01", "now": NOW, **kw})  # type: ignore[arg-type]
    return caught.value.reason


def test_a_command_round_trips_with_checked_arguments() -> None:
    payload, sent = sign_command(
        "320715-01", "logs", {"lines": 50}, CENTRE, issuer="ops@jakarta", ttl_s=600, now=NOW
    )
    got = verify_command(payload, keys=[CENTRE.public_key()], kiosk="320715-01", now=NOW)
    assert got == sent and got.args == {"lines": 50, "since": None}
    assert got.expires_at == "2026-12-01T10:10:00.000Z" and got.issuer == "ops@jakarta"


def test_each_wrong_command_is_refused_with_its_reason() -> None:
    payload, cmd = sign_command("320715-01", "sync", {}, CENTRE, issuer="ops", ttl_s=60, now=NOW)
    assert reason_of(payload, kiosk="320715-02") == "wrong-kiosk"
    assert reason_of(payload, now=NOW + dt.timedelta(seconds=61)) == "expired"
    assert reason_of(payload, keys=[KIOSK_KEY.public_key()]) == "bad-signature"
    by_kiosk, _ = sign_command("320715-01", "sync", {}, KIOSK_KEY, issuer="ops", now=NOW)
    assert reason_of(by_kiosk) == "bad-signature"  # a kiosk's own key cannot command
    flipped = bytearray(payload)
    flipped[20] ^= 1
    assert reason_of(bytes(flipped)) == "bad-signature"
    assert reason_of(payload[:-1]) == "bad-length"
    assert reason_of(b"EKTC") == "truncated"
    ack = sign_ack(
        "320715-01", [AckResult("0" * 8 + "-0000-4000-8000-" + "0" * 12, "0" * 64, AckStatus.STORED)], CENTRE
    )
    assert reason_of(ack) == "bad-magic"  # an ack, signed by the same key, is no command
    result = sign_result(CommandResult("320715-01", cmd.command_id, "sync", "ok"), CENTRE)
    assert reason_of(result) == "bad-magic"


def _forged(body: dict[str, object]) -> bytes:
    data = json.dumps(body).encode()
    signed = struct.pack(">4sBI", b"EKTC", 1, len(data)) + data
    return signed + CENTRE.sign(signed)


def test_a_signed_but_bad_body_is_refused() -> None:
    base = {
        "kiosk": "320715-01",
        "command_id": "6f1c2b0e-0b9e-4e57-a3f5-6a2f8f1d2c3b",
        "verb": "sync",
        "args": {},
        "issued_at": "2026-12-01T09:59:00Z",
        "expires_at": "2026-12-01T10:30:00Z",
        "issuer": "ops",
    }
    assert (
        verify_command(_forged(base), keys=[CENTRE.public_key()], kiosk="320715-01", now=NOW).verb == "sync"
    )
    assert reason_of(_forged({**base, "verb": "shell", "args": {"cmd": "rm -rf /"}})) == "unknown-verb"
    assert reason_of(_forged({**base, "verb": "health-interval", "args": {"seconds": 1}})) == "bad-args"
    assert reason_of(_forged({**base, "verb": "reopen", "args": {"device": "../../dev/sda"}})) == "bad-args"
    assert reason_of(_forged({**base, "args": {"extra": 1}})) == "bad-args"
    assert reason_of(_forged({**base, "command_id": "not-a-uuid"})) == "malformed"
    assert (
        reason_of(_forged({**base, "expires_at": "2027-12-01T10:30:00Z"})) == "bad-args"
    )  # lives over 7 days
    assert reason_of(_forged({k: v for k, v in base.items() if k != "kiosk"})) == "malformed"


@pytest.mark.parametrize(
    ("verb", "args"),
    [
        ("diag", {"devices": ["iris", "printer"]}),
        ("logs", {"lines": 0}),
        ("logs", {"lines": 1001}),
        ("logs", {"since": "yesterday"}),
        ("resubmit", {}),
        ("resubmit", {"rejected": True, "packet_ids": ["6f1c2b0e-0b9e-4e57-a3f5-6a2f8f1d2c3b"]}),
        ("selftest-interval", {"seconds": 3601}),
        ("selftest-interval", {"seconds": True}),
    ],
)
def test_arguments_are_bounded(verb: str, args: dict[str, object]) -> None:
    with pytest.raises(CommandError) as caught:
        check_args(verb, args)
    assert caught.value.reason == "bad-args"


def test_sign_refuses_what_a_kiosk_would_refuse() -> None:
    with pytest.raises(CommandError):
        sign_command("320715-01", "format-disk", {}, CENTRE, issuer="ops")
    with pytest.raises(ValueError, match="time to live"):
        sign_command("320715-01", "sync", {}, CENTRE, issuer="ops", ttl_s=MAX_TTL_S + 1)
    with pytest.raises(ValueError, match="kiosk id"):
        sign_command("../x", "sync", {}, CENTRE, issuer="ops")


def test_a_result_round_trips_and_names_its_kiosk() -> None:
    sent = CommandResult(
        "320715-01", "6f1c2b0e-0b9e-4e57-a3f5-6a2f8f1d2c3b", "diag", "failed", "iris fault", {"devices": []}
    )
    payload = sign_result(sent, KIOSK_KEY)
    got = verify_result(payload, keys=[KIOSK_KEY.public_key()], kiosk="320715-01")
    assert (got.status, got.reason, got.result) == (
        "failed",
        "iris fault",
        {"devices": []},
    ) and got.finished_at
    with pytest.raises(CommandError, match="names kiosk"):
        verify_result(payload, keys=[KIOSK_KEY.public_key()], kiosk="320715-02")
    with pytest.raises(CommandError) as caught:
        verify_result(payload, keys=[CENTRE.public_key()], kiosk="320715-01")
    assert caught.value.reason == "bad-signature"


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600))
def test_any_bytes_are_refused_or_a_valid_command(data: bytes) -> None:
    with pytest.raises(CommandError):
        verify_command(data, keys=[CENTRE.public_key()], kiosk="320715-01", now=NOW)
    with pytest.raises(CommandError):
        verify_result(data, keys=[KIOSK_KEY.public_key()], kiosk="320715-01")
