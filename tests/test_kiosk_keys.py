"""`ektp-agent keys rotate` and `keys init --force` never destroy a key: the old pair is moved
aside (0600, named with the time, never over another file), the new public key is printed
with the centre command that registers it. Through the console script."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import stat
import subprocess
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.kiosk_keys import retired_public_keys
from tests.agentkit import Kit, script
from tests.netkit import free_port
from wire.keys import key_fingerprint, load_kiosk_private, load_kiosk_public, public_path, raw_public

KIOSK = "320715-01"


def agent(conf: Path, *args: str, umask: int = 0o022) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [script("ektp-agent"), "--config", str(conf), *args],
        capture_output=True,
        text=True,
        timeout=60,
        umask=umask,
    )


def setup(tmp_path: Path) -> tuple[Path, Path]:
    conf = tmp_path / "agent.toml"
    conf.write_text(f'[kiosk]\nid = "{KIOSK}"\ndata_dir = "{tmp_path / "data"}"\n')
    return conf, tmp_path / "data" / "kiosk.key"


def fingerprint(key: Ed25519PrivateKey) -> str:
    return key_fingerprint(raw_public(key.public_key()))


def retired(key: Path) -> list[Path]:
    return sorted(p for p in key.parent.glob("kiosk.key.retired-*") if not p.name.endswith(".pub"))


def test_rotate_keeps_the_old_key_and_prints_the_centre_command(tmp_path: Path) -> None:
    conf, key = setup(tmp_path)
    p = agent(conf, "keys", "init", umask=0)  # even with a careless umask
    assert p.returncode == 0, p.stderr
    for f in (key, public_path(key)):
        assert stat.S_IMODE(f.stat().st_mode) == 0o600, f
    old_bytes, old_pub = key.read_bytes(), public_path(key).read_bytes()
    old = load_kiosk_private(key)

    p = agent(conf, "keys", "rotate")
    assert p.returncode == 0, p.stderr
    new = load_kiosk_private(key)
    assert fingerprint(new) != fingerprint(old)
    (moved,) = retired(key)
    assert re.fullmatch(r"kiosk\.key\.retired-\d{8}T\d{6}Z", moved.name)
    assert moved.read_bytes() == old_bytes and public_path(moved).read_bytes() == old_pub
    for f in (key, public_path(key), moved, public_path(moved)):
        assert stat.S_IMODE(f.stat().st_mode) == 0o600, f
    lines = p.stdout.splitlines()
    assert lines[0] == f"kiosk {KIOSK}: new key {fingerprint(new)}"
    assert public_path(key).read_text().strip() in p.stdout  # the new public key, PEM
    (command,) = [line.strip() for line in lines if line.strip().startswith("ektp-central ")]
    made = re.fullmatch(
        rf"ektp-central kiosk key add {KIOSK} --public-key {KIOSK}\.key\.pub --from (\S+)", command
    )
    assert made, command
    stamp = moved.name.rsplit("-", 1)[1]  # the same moment names the retired file
    assert (
        made.group(1) == f"{stamp[:4]}-{stamp[4:6]}-{stamp[6:8]}T{stamp[9:11]}:{stamp[11:13]}:{stamp[13:15]}Z"
    )
    assert lines[-1] == str(public_path(key))
    assert "BEGIN PRIVATE KEY" not in p.stdout + p.stderr
    # the service checks its own packets with every key it ever signed with
    assert [raw_public(k) for k in retired_public_keys(key)] == [raw_public(old.public_key())]


def test_rotations_in_the_same_second_and_init_force_never_overwrite(tmp_path: Path) -> None:
    conf, key = setup(tmp_path)
    assert agent(conf, "keys", "init").returncode == 0
    seen = {fingerprint(load_kiosk_private(key))}
    for args in (("keys", "rotate", "--json"), ("keys", "rotate", "--json"), ("keys", "init", "--force")):
        before = key.read_bytes()
        p = agent(conf, *args)
        assert p.returncode == 0, p.stderr
        assert any(r.read_bytes() == before for r in retired(key)), args
        seen.add(fingerprint(load_kiosk_private(key)))
    assert len(seen) == 4 and len(retired(key)) == 3  # every key ever made is still there
    assert {fingerprint(load_kiosk_private(r)) for r in retired(key)} | {
        fingerprint(load_kiosk_private(key))
    } == seen
    for r in retired(key):
        load_kiosk_public(public_path(r))
    doc = json.loads(agent(conf, "keys", "rotate", "--json").stdout)
    assert doc["fingerprint"] == fingerprint(load_kiosk_private(key))
    assert doc["centre_command"].endswith(f"--from {doc['valid_from']}")
    assert Path(doc["retired_private_key_file"]) in retired(key)


def test_rotate_without_a_key_and_init_without_force(tmp_path: Path) -> None:
    conf, key = setup(tmp_path)
    p = agent(conf, "keys", "rotate")
    assert p.returncode == 1 and f"no kiosk key at {key} to rotate" in p.stderr and "keys init" in p.stderr
    assert agent(conf, "keys", "init").returncode == 0
    before = key.read_bytes()
    p = agent(conf, "keys", "init")
    assert p.returncode == 2 and "--force" in p.stderr
    assert key.read_bytes() == before and retired(key) == []


def test_the_printed_command_registers_the_new_key_at_the_centre(tmp_path: Path) -> None:
    kit = Kit(tmp_path / "kit", free_port())
    kit.setup_keys()  # the centre knows the kiosk's first key
    p = kit.agent_cli("keys", "rotate", "--json")
    assert p.returncode == 0, p.stderr
    doc = json.loads(p.stdout)
    carried = tmp_path / "usb"  # the .pub file, carried to the centre under the name the command uses
    carried.mkdir()
    shutil.copy(doc["public_key_file"], carried / f"{KIOSK}.key.pub")
    command = shlex.split(doc["centre_command"])
    assert command[:4] == ["ektp-central", "kiosk", "key", "add"]
    p = subprocess.run(
        [script("ektp-central"), "--config", str(kit.central_conf), *command[1:], "--json"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=carried,
    )
    assert p.returncode == 0, p.stderr
    added = json.loads(p.stdout)
    assert added["changed"] is True and added["fingerprint"] == doc["fingerprint"]
    assert len(added["keys"]) == 2  # the old key stays for the packets it signed
