"""`ektp-central import DIR` on a hostile export directory: symlinks (to /etc/shadow-like files,
to the centre's own key), FIFOs, devices, sockets, hard links, oversized files, names with
terminal escapes, DIR itself a symlink. Only plain files are read; every other entry is named
with its reason and the import exits 1; the good files are imported all the same. The console
script runs on real files; the store is read back from its SQLite file."""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import stat
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from central.import_dir import MAX_FILE_BYTES, ExportDir, Skipped
from central.store import open_store
from tests import centralkit
from tests import test_central_cli as cli
from tests.centralkit import Kiosk
from wire.keys import create_central_keys

SECRET = b"root:$6$hostile$not-a-packet:19000:0:99999:7:::\n"


@dataclass
class Centre(cli.Centre):
    """The centre of tests/test_central_cli.py (`run`, `json`), with its store, key and a kiosk."""

    db: Path
    key: Path
    kiosk: Kiosk

    def quarantined(self) -> list[bytes]:
        with sqlite3.connect(self.db) as db:
            return [bytes(row[0]) for row in db.execute("SELECT data FROM quarantine")]


@pytest.fixture
def centre(tmp_path: Path) -> Centre:
    """A centre with its keys and one registered kiosk, set up through the library (fast)."""
    key = tmp_path / "keys" / "central.key"
    kiosk = centralkit.kiosk("320715-01", create_central_keys(key))
    db = tmp_path / "data" / "central.db"
    with open_store(str(db)) as store:
        store.add_kiosk(kiosk.kiosk_id, kiosk.public_pem)
    config = tmp_path / "central.toml"
    config.write_text(f'[store]\nurl = "{db}"\n[keys]\ncentral_private_key = "{key}"\n')
    return Centre(tmp_path, config, db, key, kiosk)


def good_files(centre: Centre, export: Path, seqs: list[int]) -> None:
    export.mkdir(parents=True, exist_ok=True)
    for seq in seqs:
        packet = centre.kiosk.seal(seq)
        (export / f"{seq:010d}-{packet.packet_id}.ektp").write_bytes(packet.data)


def hostile_dir(centre: Centre, tmp_path: Path) -> Path:
    """Two good packets among every kind of entry a hostile stick can hold."""
    export = tmp_path / "usb"
    good_files(centre, export, [1, 2])
    secret = tmp_path / "shadow"
    secret.write_bytes(SECRET)
    (export / "a-shadow.ektp").symlink_to(secret)
    (export / "b-central-key.ektp").symlink_to(centre.key)
    (export / "c-etc").symlink_to("/etc")
    (export / "d-dangling.ektp").symlink_to(tmp_path / "nothing-there")
    os.mkfifo(export / "e-pipe.ektp")
    (export / "f-subdir").mkdir()
    (export / "f-subdir" / "inner.ektp").write_bytes(SECRET)
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(export / "g-sock"))
    os.link(secret, export / "h-hardlink.ektp")
    with open(export / "i-huge.ektp", "wb") as f:  # sparse: no disk used
        f.truncate(MAX_FILE_BYTES + 1)
    (export / ".j-hidden-link").symlink_to(secret)  # dotfiles are ignored, links or not
    (export / "k-\x1b]0;owned\x07\x1b[2J.ektp").write_bytes(b"\x00 garbage k")  # terminal escapes
    (export / os.fsdecode(b"l-not-utf8-\xff.ektp")).write_bytes(b"\x00 garbage l")
    return export


EXPECTED_SKIPS = {
    "a-shadow.ektp": "symlink",
    "b-central-key.ektp": "symlink",
    "c-etc": "symlink",
    "d-dangling.ektp": "symlink",
    "e-pipe.ektp": "fifo",
    "f-subdir": "directory",
    "g-sock": "socket",
    "h-hardlink.ektp": "hard_link",
    "i-huge.ektp": "too_large",
}


def test_a_hostile_export_dir_skips_and_names_every_trap_and_imports_the_good_files(
    centre: Centre, tmp_path: Path
) -> None:
    export = hostile_dir(centre, tmp_path)
    try:  # a device node, where the test may make one (root, not in a nodev mount)
        os.mknod(export / "m-null.ektp", 0o600 | stat.S_IFCHR, os.makedev(1, 3))
        devices = {"m-null.ektp": "device"}
    except (PermissionError, OSError):
        devices = {}

    done = centre.run("import", str(export), "--json")  # without the fix: hangs on the FIFO
    assert done.returncode == 1, done.stderr
    report: dict[str, Any] = json.loads(done.stdout)
    assert (report["stored"], report["duplicate"], report["rejected"], report["damaged"]) == (2, 0, 0, 2)
    assert {s["file"]: s["kind"] for s in report["skipped"]} == EXPECTED_SKIPS | devices
    reasons = {s["file"]: s["reason"] for s in report["skipped"]}
    assert (
        f"to {tmp_path / 'shadow'}" in reasons["a-shadow.ektp"]
        and "never followed" in reasons["a-shadow.ektp"]
    )
    assert "ektp-central import" in reasons["f-subdir"] and "not entered" in reasons["f-subdir"]
    assert "2 names" in reasons["h-hardlink.ektp"]
    assert str(MAX_FILE_BYTES) in reasons["i-huge.ektp"]
    files = {f["file"]: f["status"] for f in report["files"]}
    assert files["k-\\x1b]0;owned\\x07\\x1b[2J.ektp"] == "damaged"  # escaped, never raw
    assert files["l-not-utf8-\\xff.ektp"] == "damaged"
    assert not any(name.startswith(".") for name in files | reasons)

    # nothing of the secret, the key or the inner file reached the store; only the two garbage files
    quarantined = centre.quarantined()
    assert sorted(quarantined) == [b"\x00 garbage k", b"\x00 garbage l"]


def test_the_text_report_names_each_skipped_entry_and_prints_no_raw_escapes(
    centre: Centre, tmp_path: Path
) -> None:
    export = hostile_dir(centre, tmp_path)
    done = centre.run("import", str(export))
    assert done.returncode == 1, done.stderr
    lines = done.stdout.strip().splitlines()
    for name, kind in EXPECTED_SKIPS.items():
        assert any(line.startswith(f"skipped {name}: ") for line in lines), (name, kind, lines)
    assert (
        lines[-1]
        == f"stored 2, duplicate 0, rejected 0, damaged 2, conflict 0, skipped {len(EXPECTED_SKIPS)}"
    )
    assert "\x1b" not in done.stdout and "\x07" not in done.stdout
    assert "damaged k-\\x1b]0;owned\\x07\\x1b[2J.ektp: " in done.stdout


def test_a_clean_import_after_skips_is_exit_0_again(centre: Centre, tmp_path: Path) -> None:
    """Skips make exit 1 only while the entries are there; the good files were stored the first time."""
    export = tmp_path / "usb"
    good_files(centre, export, [1, 2, 3])
    (export / "shadow.ektp").symlink_to(tmp_path / "central.toml")
    first = centre.run("import", str(export), "--json")
    assert first.returncode == 1, first.stderr
    report = json.loads(first.stdout)
    assert report["stored"] == 3 and [(s["file"], s["kind"]) for s in report["skipped"]] == [
        ("shadow.ektp", "symlink")
    ]
    (export / "shadow.ektp").unlink()
    again = centre.run("import", str(export))
    assert again.returncode == 0, again.stderr
    assert again.stdout.strip() == "stored 0, duplicate 3, rejected 0, damaged 0, conflict 0"


@pytest.mark.parametrize("where", ["dir", "parent"])
def test_a_symlinked_dir_is_refused_with_its_real_path(centre: Centre, tmp_path: Path, where: str) -> None:
    """A stick's `export` -> the centre's key directory: nothing read, exit 2, the real path named."""
    (tmp_path / "stick").mkdir()
    if where == "dir":
        (tmp_path / "stick" / "export").symlink_to(centre.key.parent)
        target, link = tmp_path / "stick" / "export", tmp_path / "stick" / "export"
    else:
        (tmp_path / "stick" / "up").symlink_to(tmp_path)
        target, link = tmp_path / "stick" / "up" / "keys", tmp_path / "stick" / "up"
    done = centre.run("import", str(target), "--json")
    assert done.returncode == 2, done.stderr
    assert f"{link} is a symlink" in done.stderr and str(os.path.realpath(link)) in done.stderr
    assert done.stdout == ""
    assert centre.quarantined() == []


def test_an_import_of_the_centres_own_directories_reads_none_of_its_files(centre: Centre) -> None:
    """Pointed at the store's or the keys' directory by mistake, the import never reads the
    database or the private key as packets (the public key is harmless and only damaged)."""
    data = centre.run("import", str(centre.db.parent), "--json")
    assert data.returncode == 1, data.stderr
    skipped = {s["file"]: s["kind"] for s in json.loads(data.stdout)["skipped"]}
    assert skipped["central.db"] == "centre_file"
    assert all(kind == "centre_file" for kind in skipped.values())
    keys = centre.run("import", str(centre.key.parent), "--json")
    assert keys.returncode == 1, keys.stderr
    report = json.loads(keys.stdout)
    assert {s["file"]: s["kind"] for s in report["skipped"]} == {"central.key": "centre_file"}
    assert not any(b"PRIVATE KEY" in q for q in centre.quarantined())


# ----------------------------------------------------------------------------- the open itself


def test_an_entry_replaced_after_the_listing_is_opened_without_following_or_blocking(tmp_path: Path) -> None:
    """read_file is what runs once the listing said "regular file": a symlink or a FIFO put in
    its place meanwhile must be refused by the open (O_NOFOLLOW, O_NONBLOCK) and its fstat."""
    export = tmp_path / "usb"
    export.mkdir()
    (tmp_path / "secret").write_bytes(SECRET)
    (export / "link").symlink_to(tmp_path / "secret")
    os.mkfifo(export / "pipe")
    with ExportDir(str(export)) as listing:
        assert listing.names == ["link", "pipe"]
        link = listing.read_file("link")
        assert isinstance(link, Skipped) and link.kind == "symlink"

        result: list[bytes | Skipped] = []
        opener = threading.Thread(target=lambda: result.append(listing.read_file("pipe")), daemon=True)
        opener.start()
        opener.join(10)
        if opener.is_alive():  # the open blocked: give it a writer so the thread ends, then fail
            os.close(os.open(export / "pipe", os.O_WRONLY))
            opener.join()
            pytest.fail("opening a FIFO blocked (no O_NONBLOCK)")
        (pipe,) = result
        assert isinstance(pipe, Skipped) and pipe.kind == "fifo"
