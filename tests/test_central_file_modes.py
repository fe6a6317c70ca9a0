"""The centre's SQLite store holds encrypted packets, the quarantine and the kiosks' keys: its
file and its -wal and -shm files are 0600 whatever the umask (0640 for the group of a setgid
directory), an existing looser file is tightened with a warning, and a user other than the
owner cannot read them (an unprivileged reader, through setpriv, where the tests run as root)."""

from __future__ import annotations

import os
import shutil
import sqlite3
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from central.store import open_store

CENTRAL = Path(sys.executable).parent / "ektp-central"
NOBODY = 65534  # uid and gid of nobody / nogroup
SETPRIV = shutil.which("setpriv")


def mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def store_files(db: Path) -> list[Path]:
    return [db, Path(f"{db}-wal"), Path(f"{db}-shm")]


@pytest.fixture
def open_dir() -> Iterator[Path]:
    """A directory anyone may pass through (pytest's tmp_path is 0700: it would hide the files
    from another user whatever their modes, and prove nothing)."""
    path = Path(tempfile.mkdtemp(prefix="ektp-modes-", dir="/tmp"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path)


@pytest.fixture
def umask_022() -> Iterator[None]:
    old = os.umask(0o022)  # the usual umask: SQLite alone would create 0644
    try:
        yield
    finally:
        os.umask(old)


def readable_by(uid: int, gid: int, path: Path) -> bool:
    """Whether an unprivileged process of ``uid``/``gid`` (no other groups) can read ``path``."""
    assert SETPRIV is not None
    done = subprocess.run(
        [SETPRIV, f"--reuid={uid}", f"--regid={gid}", "--clear-groups", "cat", str(path)],
        capture_output=True,
        timeout=30,
    )
    return done.returncode == 0


needs_root_and_setpriv = pytest.mark.skipif(
    os.geteuid() != 0 or SETPRIV is None, reason="needs root and setpriv to read as another user"
)


def central(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(CENTRAL), "--config", str(config), *args],
        capture_output=True,
        text=True,
        timeout=60,
        umask=0o022,
    )


def write_config(directory: Path, db: Path) -> Path:
    config = directory / "central.toml"
    config.write_text(f'[store]\nurl = "{db}"\n[keys]\ncentral_private_key = "{directory}/central.key"\n')
    return config


def test_a_new_store_and_its_side_files_are_0600_under_umask_022(open_dir: Path, umask_022: None) -> None:
    db = open_dir / "data" / "central.db"
    with open_store(str(db)) as store:  # open: the -wal and -shm files exist now
        store.record_status("320715-01", {"state": "online", "connection": 1})  # into the -wal
        assert all(p.exists() for p in store_files(db))
        assert {p.name: oct(mode(p)) for p in store_files(db)} == {p.name: "0o600" for p in store_files(db)}


def test_the_console_script_creates_the_store_0600(open_dir: Path) -> None:
    db = open_dir / "central.db"
    done = central(write_config(open_dir, db), "kiosks", "--json")
    assert done.returncode == 0, done.stderr
    assert oct(mode(db)) == "0o600"


@needs_root_and_setpriv
def test_another_user_cannot_read_the_store_files(open_dir: Path, umask_022: None) -> None:
    control = open_dir / "control"
    control.write_bytes(b"a file of mode 0644 beside the store")
    control.chmod(0o644)
    assert readable_by(NOBODY, NOBODY, control), "the reader must get through the directory"
    db = open_dir / "central.db"
    with open_store(str(db)) as store:
        store.record_status("320715-01", {"state": "online", "connection": 1})
        for path in store_files(db):
            assert not readable_by(NOBODY, NOBODY, path), path


def test_an_existing_loose_store_and_its_side_files_are_tightened_with_a_warning(
    open_dir: Path, umask_022: None
) -> None:
    """As an older release left it: 0644 files, and an open connection keeping its -wal and -shm."""
    db = open_dir / "central.db"
    legacy = sqlite3.connect(db, isolation_level=None)
    try:
        legacy.execute("PRAGMA journal_mode = WAL")
        legacy.execute("CREATE TABLE legacy (x)")
        assert [mode(p) for p in store_files(db)] == [0o644] * 3
        done = central(write_config(open_dir, db), "kiosks", "--json")
        assert done.returncode == 0, done.stderr
        assert [mode(p) for p in store_files(db)] == [0o600] * 3
        for path in store_files(db):
            assert f"central store file {path} was mode 0644; now 0600" in done.stderr
        again = central(write_config(open_dir, db), "kiosks", "--json")
        assert again.returncode == 0 and "central store file" not in again.stderr  # nothing more to do
    finally:
        legacy.close()


@needs_root_and_setpriv
def test_a_setgid_directory_shares_the_store_with_its_group_and_no_one_else(
    open_dir: Path, umask_022: None
) -> None:
    """The documented way to let a group (a backup agent) read the store: chgrp and chmod g+s its directory."""
    shared = open_dir / "shared"
    shared.mkdir()
    os.chown(shared, 0, NOBODY)
    shared.chmod(0o2755)
    db = shared / "central.db"
    with open_store(str(db)) as store:
        store.record_status("320715-01", {"state": "online", "connection": 1})
        for path in store_files(db):
            assert (mode(path), os.stat(path).st_gid) == (0o640, NOBODY), path
            assert readable_by(NOBODY, NOBODY, path), path  # the group reads
            assert not readable_by(NOBODY - 1, NOBODY - 1, path), path  # the others do not

    loose = shared / "loose.db"
    loose.write_bytes(b"")
    loose.chmod(0o666)
    with open_store(str(loose)):
        assert mode(loose) == 0o640  # the group keeps reading, write and the others go
