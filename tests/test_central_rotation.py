"""Rotating the centre's own keys: nothing is overwritten, packets sealed to a retired key
still open (consumer, import), and a kiosk that still has the old `.pub` keeps getting acks
it can verify until it is given the new one; then the centre answers with the new key only."""

from __future__ import annotations

import contextlib
import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from central.ingest import Ingestor
from central.keyring import load_keyring, retired_files, rotate
from central.store import open_store
from tests.linkkit import Centre, Keys, Kiosk, all_delivered, assert_exactly_once, wait_for
from tests.netkit import Broker
from wire.keys import public_path

KIOSK = "320715-01"
CENTRAL = Path(sys.executable).parent / "ektp-central"


@pytest.fixture
def stack() -> Iterator[contextlib.ExitStack]:
    with contextlib.ExitStack() as s:
        yield s


def central(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "EKTP_CENTRAL_CONFIG"}
    return subprocess.run(
        [str(CENTRAL), "--config", str(config), *args], capture_output=True, text=True, timeout=60, env=env
    )


def test_keys_rotate_and_init_force_never_overwrite(tmp_path: Path) -> None:
    config = tmp_path / "central.toml"
    config.write_text(
        f'[store]\nurl = "{tmp_path / "c.db"}"\n[keys]\ncentral_private_key = "{tmp_path / "k" / "c.key"}"\n'
    )
    key = tmp_path / "k" / "c.key"
    assert central(config, "keys", "init").returncode == 0
    first = key.read_bytes()
    again = central(config, "keys", "init")
    assert again.returncode == 2 and "keys rotate" in again.stderr and key.read_bytes() == first

    done = central(config, "keys", "rotate")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == str(public_path(key))
    (retired,) = retired_files(key)
    assert retired.read_bytes() == first and key.read_bytes() != first
    assert stat.S_IMODE(retired.stat().st_mode) == 0o600 and public_path(retired).exists()

    assert central(config, "keys", "init", "--force").returncode == 0  # a rotation too, never a loss
    assert len(retired_files(key)) == 2 and first in {p.read_bytes() for p in retired_files(key)}
    assert len(load_keyring(key).generations) == 3


def test_a_kiosk_with_the_old_pub_is_served_through_a_rotation(
    tmp_path: Path, stack: contextlib.ExitStack
) -> None:
    broker = Broker(tmp_path / "broker")
    broker.start()
    stack.callback(broker.stop)
    keys = Keys(tmp_path, KIOSK)
    old_kiosk = Kiosk(tmp_path / "k", broker.port, keys, window=4)  # has the .pub of key pair A
    stopped: list[bool] = []
    stack.callback(lambda: stopped or old_kiosk.stop())
    sealed_to_a = old_kiosk.commit(3)

    rotate(keys.central_path)  # pair B in place, A retired beside it
    keyring = load_keyring(keys.central_path)
    with open_store(str(tmp_path / "control.db")) as store:  # the control: without A nothing opens
        store.add_kiosk(KIOSK, public_path(keys.kiosk_path).read_bytes())
        refused = Ingestor(store, keyring.current).ingest(sealed_to_a[0].data, "mqtt")
        assert (refused.status, refused.fault) == ("rejected", "wrong_key")
    keys.central = keyring  # type: ignore[assignment]  # the centre runs with B and the retired A
    centre = Centre(tmp_path / "c", broker.port, keys)
    stack.callback(centre.stop)
    wait_for(lambda: all_delivered(old_kiosk), 30, "the packets sealed to the retired key delivered")
    assert KIOSK not in centre.consumer._on_current_key  # it still has A: acks went out signed by A and B
    old_kiosk.stop()
    stopped.append(True)

    keys.central = keyring.current  # the technician installs B's .pub on the kiosk and restarts it
    new_kiosk = Kiosk(tmp_path / "k", broker.port, keys, window=4)
    stack.callback(new_kiosk.stop)
    new_kiosk.receipts = old_kiosk.receipts + new_kiosk.receipts
    new_kiosk.commit(2)
    wait_for(lambda: all_delivered(new_kiosk), 30, "the packets sealed to the new key delivered")
    assert KIOSK in centre.consumer._on_current_key
    assert_exactly_once(centre, new_kiosk)
