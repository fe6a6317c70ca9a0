"""`ektp-agent export --to DIR` on a medium someone else prepared: DIR must be a plain
directory, nothing in it is written through (symlinks, FIFOs, hard links at a packet's
name), the files are private and synced. Driven through the console script, as root (the
way the docs run it), on an outbox of signed packets written by the store itself."""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import subprocess
import uuid
from pathlib import Path

import pytest

from agent.export import file_name
from agent.outbox import Outbox
from tests.agentkit import script
from tests.outbox_child import key_from_hex, seal

KEY = key_from_hex("4ccd089b28ff96da9db6c346ec114e0f5b8a319f35aba624da8cf6ed4fb8a6fb")
SECRET = b"root:$6$not-for-the-stick:19000:0:99999:7:::\n"


@pytest.fixture
def kiosk(tmp_path: Path) -> tuple[Path, list[tuple[str, bytes]]]:
    """A config and an outbox of three packets: (config, [(file name, bytes)])."""
    data = tmp_path / "data"
    conf = tmp_path / "agent.toml"
    conf.write_text(f'[kiosk]\nid = "320715-01"\ndata_dir = "{data}"\n')
    packets = []
    with Outbox(data / "outbox.db") as ob:
        for i in range(3):
            packet_id = str(uuid.uuid4())
            r = ob.commit(lambda seq, p=packet_id, n=i: seal(KEY, seq, p, bytes([n]) * 3000))
            packets.append((file_name(r.seq, r.packet_id), ob.get(r.packet_id) or b""))
    return conf, packets


def export(conf: Path, *args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    """A FIFO would hang the old export for ever: the timeout turns that into a failure."""
    return subprocess.run(
        [script("ektp-agent"), "--config", str(conf), "export", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def victim(tmp_path: Path) -> Path:
    """A root-owned 0600 file that must never change."""
    path = tmp_path / "shadow"
    path.write_bytes(SECRET)
    os.chmod(path, 0o600)
    return path


@pytest.mark.parametrize("kind", ["symlink to a directory", "FIFO", "file", "device"])
def test_a_target_that_is_not_a_plain_directory_is_refused(
    kiosk: tuple[Path, list[tuple[str, bytes]]], tmp_path: Path, kind: str
) -> None:
    conf, _ = kiosk
    target = tmp_path / "usb"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    if kind == "symlink to a directory":
        target.symlink_to(elsewhere)
        words = f"a symbolic link (to {elsewhere})"
    elif kind == "FIFO":
        os.mkfifo(target)
        words = "a FIFO (named pipe)"
    elif kind == "file":
        target.write_bytes(SECRET)
        words = "a file"
    else:
        target = Path("/dev/null")
        words = "a device"
    p = export(conf, "--to", str(target))
    assert p.returncode == 2, p.stderr
    assert f"refusing to export to {target}: it is {words}, not a plain directory" in p.stderr
    assert "mount point" in p.stderr and "Traceback" not in p.stderr
    assert list(elsewhere.iterdir()) == []
    if kind == "file":
        assert target.read_bytes() == SECRET


def test_planted_names_inside_the_target_are_replaced_never_written_through(
    kiosk: tuple[Path, list[tuple[str, bytes]]], tmp_path: Path
) -> None:
    conf, packets = kiosk
    usb = tmp_path / "usb"
    usb.mkdir()
    secret = victim(tmp_path)
    (first, _), (second, _), (third, _) = packets
    (usb / first).symlink_to(secret)  # the symlink at the packet's own name
    (usb / f".{first}.tmp").symlink_to(secret)  # and at the old export's temporary name
    os.mkfifo(usb / second)  # a FIFO: reading it would hang
    os.link(secret, usb / third)  # a hard link to the victim at the packet's name
    p = export(conf, "--to", str(usb), "--json")
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["written"] == 3
    assert secret.read_bytes() == SECRET and stat.S_IMODE(secret.stat().st_mode) == 0o600
    assert secret.stat().st_nlink == 1  # the hard link was replaced, not written into
    for name, data in packets:
        st = (usb / name).lstat()
        assert stat.S_ISREG(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600, name
        assert (usb / name).read_bytes() == data
    assert (usb / f".{first}.tmp").is_symlink()  # not ours: left alone
    assert not list(usb.glob(".ektp-export-*")), "the fresh folder was not removed"


def test_a_directory_at_a_packets_name_is_a_clear_error(
    kiosk: tuple[Path, list[tuple[str, bytes]]], tmp_path: Path
) -> None:
    conf, packets = kiosk
    usb = tmp_path / "usb"
    (usb / packets[1][0] / "inside").mkdir(parents=True)
    p = export(conf, "--to", str(usb))
    assert p.returncode == 1, p.stderr
    assert f"cannot write {usb / packets[1][0]}: a directory stands at that name" in p.stderr
    assert "Traceback" not in p.stderr
    assert not list(usb.glob(".ektp-export-*"))


def test_export_is_idempotent_private_and_synced(
    kiosk: tuple[Path, list[tuple[str, bytes]]], tmp_path: Path
) -> None:
    conf, packets = kiosk
    usb = tmp_path / "media" / "usb"  # missing: made, 0700
    p = export(conf, "--to", str(usb), "--json")
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["written"] == 3
    assert stat.S_IMODE(usb.stat().st_mode) == 0o700
    assert sorted(f.name for f in usb.iterdir()) == sorted(name for name, _ in packets)
    assert {stat.S_IMODE(f.stat().st_mode) for f in usb.iterdir()} == {0o600}
    p = export(conf, "--to", str(usb), "--json")
    doc = json.loads(p.stdout)
    assert (doc["written"], doc["already_there"]) == (0, 3)
    (usb / packets[0][0]).write_bytes(b"a stale or altered copy")
    p = export(conf, "--to", str(usb), "--json")
    assert (json.loads(p.stdout)["written"], json.loads(p.stdout)["already_there"]) == (1, 2)
    assert (usb / packets[0][0]).read_bytes() == packets[0][1]


@pytest.mark.skipif(shutil.which("strace") is None, reason="strace is not installed")
def test_each_file_and_the_folder_are_fsynced(
    kiosk: tuple[Path, list[tuple[str, bytes]]], tmp_path: Path
) -> None:
    conf, packets = kiosk
    usb = tmp_path / "usb"
    usb.mkdir()
    log = tmp_path / "strace.log"
    strace = ["strace", "-f", "-yy", "-e", "trace=fsync,fdatasync", "-o", str(log)]
    p = subprocess.run(
        [*strace, script("ektp-agent"), "--config", str(conf), "export", "--to", str(usb)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert p.returncode == 0, p.stderr
    synced = set(re.findall(r"fsync\(\d+<([^>]+)>\) = 0", log.read_text()))
    assert str(usb) in synced, synced
    for name, _ in packets:  # written in the fresh folder, fsynced there before the rename
        assert any(s.endswith(f"/{name}") for s in synced), (name, synced)
