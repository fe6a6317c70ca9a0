"""Hostile messages at a running centre (a real broker, the consumer on a thread): health and
status documents with non-finite numbers are refused at ingest, so `fleet --json` stays
JSON; the consumer lives on and takes the next good document."""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Iterator
from pathlib import Path

import pytest

from central.store import StoreInputError, open_store
from tests.linkkit import Centre, Keys, Watcher, wait_for
from tests.netkit import Broker

KIOSK = "320715-01"


@pytest.fixture
def stack() -> Iterator[contextlib.ExitStack]:
    with contextlib.ExitStack() as s:
        yield s


@pytest.fixture
def broker(tmp_path: Path, stack: contextlib.ExitStack) -> Broker:
    b = Broker(tmp_path / "broker")
    b.start()
    stack.callback(b.stop)
    return b


def test_non_finite_numbers_in_health_are_refused_and_the_fleet_stays_json(
    tmp_path: Path, stack: contextlib.ExitStack, broker: Broker
) -> None:
    keys = Keys(tmp_path, KIOSK)
    centre = Centre(tmp_path / "c", broker.port, keys)
    stack.callback(centre.stop)
    sender = Watcher(broker.port, f"ektp/v1/{KIOSK}/ack")
    stack.callback(sender.close)
    for bad in (b'{"queue": {"pending": Infinity}}', b'{"queue": {"oldest_pending_age_s": NaN}}'):
        sender.publish(f"ektp/v1/{KIOSK}/health", bad)
    sender.publish(f"ektp/v1/{KIOSK}/status", b'{"state": "online", "connection": 1, "uptime_s": -Infinity}')
    wait_for(lambda: centre.consumer.counts["bad_health"] == 2, 10, "both bad health documents counted")
    wait_for(lambda: centre.consumer.counts["bad_status"] == 1, 10, "the bad status counted")
    good = {"queue": {"pending": 3, "oldest_pending_age_s": 12.5}}
    sender.publish(f"ektp/v1/{KIOSK}/health", json.dumps(good).encode())
    wait_for(lambda: centre.health(KIOSK) == good, 10, "the good health document after the bad ones")
    assert centre.thread.is_alive()
    with open_store(centre.url) as store:
        text = json.dumps(store.fleet(), allow_nan=False)  # raises on a non-finite number
        assert json.loads(text)[0]["backlog"] == 3
        with pytest.raises(StoreInputError, match="finite"):
            store.record_health(KIOSK, {"queue": {"pending": math.inf}})
        with pytest.raises(StoreInputError, match="finite"):
            store.record_status(KIOSK, {"state": "online", "load": math.nan})


@pytest.mark.parametrize("value", ["10", "-1", "2199023255552", '"big"'])
def test_a_quarantine_cap_that_cannot_work_is_a_config_error(tmp_path: Path, value: str) -> None:
    import os
    import subprocess
    import sys

    config = tmp_path / "central.toml"
    config.write_text(f'[store]\nurl = "{tmp_path / "c.db"}"\nquarantine_cap_bytes = {value}\n')
    env = {k: v for k, v in os.environ.items() if k != "EKTP_CENTRAL_CONFIG"}
    done = subprocess.run(
        [str(Path(sys.executable).parent / "ektp-central"), "--config", str(config), "fleet"],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert done.returncode == 2 and "quarantine_cap_bytes" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize(
    "mqtt",
    [
        'tls = true\nca_file = "missing-ca.pem"\n',
        'username = "centre"\npassword_file = "missing-password"\n',
    ],
)
def test_run_with_a_missing_tls_or_password_file_is_a_config_error(tmp_path: Path, mqtt: str) -> None:
    import os
    import subprocess
    import sys

    from wire.keys import create_central_keys

    create_central_keys(tmp_path / "c.key")
    config = tmp_path / "central.toml"
    config.write_text(
        f'[mqtt]\nhost = "127.0.0.1"\nport = 9\n{mqtt}[store]\nurl = "{tmp_path / "c.db"}"\n'
        f'[keys]\ncentral_private_key = "{tmp_path / "c.key"}"\n'
    )
    env = {k: v for k, v in os.environ.items() if k != "EKTP_CENTRAL_CONFIG"}
    done = subprocess.run(
        [str(Path(sys.executable).parent / "ektp-central"), "--config", str(config), "run"],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert ("ca_file" in done.stderr) or ("password_file" in done.stderr)
