"""A full disk gives the clean refusal (DiskFull, a StoreFull), loses nothing, and passes."""

from __future__ import annotations

import errno
import functools
import os
import random
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.outbox import DiskFull, Outbox, Receipt, StoreFull
from tests.outbox_child import key_from_hex, seal, verify

KEY = key_from_hex("c5aa8df43f9f837bedb7442f31dcb7b166d38535076f094b85ce3a2e0b4458f7")
PUBLIC = KEY.public_key()
TMPFS_SIZE = "3m"


def _commit_until_full(outbox: Outbox, size: int, rng: random.Random) -> tuple[list[Receipt], DiskFull]:
    receipts: list[Receipt] = []
    for _ in range(10_000):
        body = rng.randbytes(size)
        packet_id = str(uuid.uuid4())
        try:
            receipts.append(outbox.commit(functools.partial(seal, KEY, packet_id=packet_id, body=body)))
        except DiskFull as exc:
            return receipts, exc
    raise AssertionError("the disk never filled")


def _assert_intact(outbox: Outbox, receipts: list[Receipt]) -> None:
    for r in receipts:
        assert verify(PUBLIC, outbox.get(r.packet_id) or b"")[:2] == (r.seq, r.packet_id)
    assert outbox.stats().last_seq == receipts[-1].seq  # the refused commits consumed no seq


def _assert_clean_refusal(exc: DiskFull, db: Path) -> None:
    assert isinstance(exc, StoreFull) and isinstance(exc, OSError)
    assert exc.errno == errno.ENOSPC
    message = str(exc)
    assert "disk full" in message and str(db) in message and "ektp-agent export --to DIR" in message


def test_sqlite_page_limit_refuses_cleanly_and_recovers_after_delivery(tmp_path: Path) -> None:
    db = tmp_path / "outbox.db"
    with Outbox(db, max_page_count=400) as ob:  # ~1.6 MB of 4 KiB pages
        receipts, exc = _commit_until_full(ob, 20_000, random.Random(1))
        assert len(receipts) > 10
        _assert_clean_refusal(exc, db)
        _assert_intact(ob, receipts)
        with pytest.raises(DiskFull):  # still full: still refused, still nothing lost
            ob.commit(lambda seq: seal(KEY, seq, str(uuid.uuid4()), b"x" * 20_000))
        ob.mark_delivered([r.packet_id for r in receipts[:5]])  # frees pages inside the file
        more = ob.commit(lambda seq: seal(KEY, seq, str(uuid.uuid4()), b"y" * 20_000))
        assert more.seq == receipts[-1].seq + 1
    with Outbox(db) as ob:
        _assert_intact(ob, [*receipts[5:], more])


@pytest.fixture
def small_tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A tmpfs of TMPFS_SIZE mounted for the test (needs root and mount rights)."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a size-limited tmpfs needs root")
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={TMPFS_SIZE},mode=0700", "tmpfs", str(mnt)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip() or done.returncode}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=True, capture_output=True)


def test_enospc_on_a_full_filesystem_refuses_cleanly_and_recovers(small_tmpfs: Path) -> None:
    db = small_tmpfs / "outbox.db"
    filler = small_tmpfs / "filler"
    filler.write_bytes(b"\0" * 1024 * 1024)  # something else on the disk, freed later
    with Outbox(db) as ob:
        receipts, exc = _commit_until_full(ob, 30_000, random.Random(2))
        assert len(receipts) > 10
        _assert_clean_refusal(exc, db)
        _assert_intact(ob, receipts)
        filler.unlink()  # the technician frees space
        more = ob.commit(lambda seq: seal(KEY, seq, str(uuid.uuid4()), b"z" * 30_000))
        assert more.seq == receipts[-1].seq + 1
    with Outbox(db) as ob:  # and after a restart, everything is there
        _assert_intact(ob, [*receipts, more])
