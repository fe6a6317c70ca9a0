"""Key files: PEM both ways, 0600 private files written atomically, loose modes refused."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from wire.keys import (
    KeyFileExists,
    KeyFileInsecure,
    KeyFileInvalid,
    KeyFileMissing,
    create_central_keys,
    create_kiosk_key,
    load_central_private,
    load_central_public,
    load_kiosk_private,
    load_kiosk_public,
    public_path,
    raw_public,
)


def test_kiosk_key_round_trip_and_modes(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "kiosk.key"
    key = create_kiosk_key(path)
    assert path.stat().st_mode & 0o777 == 0o600
    assert public_path(path) == tmp_path / "sub" / "kiosk.key.pub"
    assert raw_public(load_kiosk_public(public_path(path))) == raw_public(key.public_key())
    assert raw_public(load_kiosk_private(path).public_key()) == raw_public(key.public_key())
    assert not list(path.parent.glob(".*tmp*")), "temporary file left behind"


def test_refuses_to_overwrite_without_force(tmp_path: Path) -> None:
    path = tmp_path / "kiosk.key"
    first = create_kiosk_key(path)
    with pytest.raises(KeyFileExists, match="--force"):
        create_kiosk_key(path)
    assert raw_public(load_kiosk_private(path).public_key()) == raw_public(first.public_key())
    second = create_kiosk_key(path, force=True)
    assert raw_public(load_kiosk_private(path).public_key()) == raw_public(second.public_key())


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660])
def test_loose_private_key_mode_is_refused(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "kiosk.key"
    create_kiosk_key(path)
    os.chmod(path, mode)
    with pytest.raises(KeyFileInsecure, match="chmod 600"):
        load_kiosk_private(path)


def test_umask_does_not_change_the_private_mode(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        create_kiosk_key(tmp_path / "kiosk.key")
    finally:
        os.umask(old)
    assert (tmp_path / "kiosk.key").stat().st_mode & 0o777 == 0o600


def test_missing_and_invalid_files(tmp_path: Path) -> None:
    with pytest.raises(KeyFileMissing, match="keys init"):
        load_kiosk_private(tmp_path / "none.key")
    bad = tmp_path / "bad.key"
    bad.write_bytes(b"not a key")
    os.chmod(bad, 0o600)
    with pytest.raises(KeyFileInvalid):
        load_kiosk_private(bad)
    central = tmp_path / "central.key"
    create_central_keys(central)
    with pytest.raises(KeyFileInvalid, match="expected 1"):
        load_kiosk_private(central)  # two blocks: the centre's file, not a kiosk's


def test_central_keys_two_blocks_each(tmp_path: Path) -> None:
    path = tmp_path / "central.key"
    keys = create_central_keys(path)
    assert path.read_bytes().count(b"-----BEGIN PRIVATE KEY-----") == 2
    pub = load_central_public(public_path(path))
    assert raw_public(pub.encryption) == raw_public(keys.encryption.public_key())
    assert raw_public(pub.signing) == raw_public(keys.signing.public_key())
    again = load_central_private(path)
    assert raw_public(again.signing.public_key()) == raw_public(keys.signing.public_key())


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl is not installed")
def test_openssl_reads_the_files(tmp_path: Path) -> None:
    path = tmp_path / "kiosk.key"
    create_kiosk_key(path)
    for args in (["pkey", "-in", str(path)], ["pkey", "-pubin", "-in", str(public_path(path))]):
        p = subprocess.run(["openssl", *args, "-noout"], capture_output=True, timeout=30)
        assert p.returncode == 0, p.stderr
