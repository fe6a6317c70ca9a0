"""The installed console scripts, driven as a user drives them: config files, keys, and
`ektp-agent run --simulate` / `ektp-central run` as child processes."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.netkit import Broker

BIN = Path(sys.executable).parent


def script(name: str) -> str:
    path = BIN / name
    if not path.exists():
        raise RuntimeError(f"console script {name} is not installed in {BIN}: run `make setup`")
    return str(path)


class Kit:
    """One kiosk and one centre, configured in ``root``, talking to a broker on ``port``.

    ``instant_pen``: the simulator that `ektp-agent run --simulate` starts streams a signature
    at once (EKTP_SIM_INSTANT_PEN=1, `ektp-sim run --instant-pen`) rather than at the pen's
    real pace (a second or two per resident). Most tests enroll residents for what follows
    (delivery, kills, faults), not for the pad's pace, so it is on by default; a test where the
    pace matters sets it False (tests/chaos/test_chaos.py's R1, whose kills land within an
    enrollment's real duration). The demo (tests/test_demo.py) and the pad's own tests
    (tests/drivers/test_signature_device.py) run the pad at the real pace too."""

    instant_pen = True

    def __init__(
        self,
        root: Path,
        port: int,
        *,
        kiosk_id: str = "320715-01",
        health_s: float = 1.0,
        extra_agent: str = "",
    ) -> None:
        self.root = root
        self.kiosk_id = kiosk_id
        self.port = port
        (root / "central").mkdir(parents=True, exist_ok=True)
        (root / "kiosk").mkdir(parents=True, exist_ok=True)
        self.data_dir = root / "kiosk" / "data"
        self.central_conf = root / "central" / "central.toml"
        self.agent_conf = root / "kiosk" / "agent.toml"
        self.procs: list[subprocess.Popen[bytes]] = []
        self.agent: subprocess.Popen[bytes] | None = None
        self.write_configs(port, health_s, extra_agent)

    def write_configs(self, port: int, health_s: float = 1.0, extra_agent: str = "") -> None:
        c = self.root / "central"
        self.central_conf.write_text(
            f'[mqtt]\nhost = "127.0.0.1"\nport = {port}\n[store]\nurl = "{c / "central.db"}"\n'
            f'[keys]\ncentral_private_key = "{c / "central.key"}"\n'
        )
        self.agent_conf.write_text(
            f'[kiosk]\nid = "{self.kiosk_id}"\ndata_dir = "{self.data_dir}"\n'
            f'[mqtt]\nhost = "127.0.0.1"\nport = {port}\nkeepalive_s = 5\nack_timeout_s = 5\n'
            f"reconnect_min_s = 0.2\nreconnect_max_s = 1\n"
            f'[keys]\ncentral_public_key = "{c / "central.key.pub"}"\n[health]\ninterval_s = {health_s}\n{extra_agent}'
        )

    def agent_cli(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [script("ektp-agent"), "--config", str(self.agent_conf), *args],
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def central_cli(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [script("ektp-central"), "--config", str(self.central_conf), *args],
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def setup_keys(self) -> None:
        for p in (self.central_cli("keys", "init"), self.agent_cli("keys", "init")):
            assert p.returncode == 0, p.stderr
        pub = self.agent_cli("keys", "init").stdout  # refuses: the key exists
        assert pub == ""
        p = self.central_cli(
            "kiosk", "add", self.kiosk_id, "--public-key", str(self.data_dir / "kiosk.key.pub")
        )
        assert p.returncode == 0, p.stderr

    def spawn(
        self,
        tool: str,
        *args: str,
        name: str,
        env: dict[str, str] | None = None,
        prefix: tuple[str, ...] = (),
    ) -> subprocess.Popen[bytes]:
        """The console script as a child in its own session; ``prefix`` runs it through a
        wrapper (e.g. ``("prlimit", "--nofile=256:256")``)."""
        conf = self.central_conf if tool == "ektp-central" else self.agent_conf
        if args[:1] == ("--config",):
            conf, args = Path(args[1]), args[2:]
        log = open(self.root / f"{name}.log", "ab")  # noqa: SIM115 - the child writes it
        pen = {"EKTP_SIM_INSTANT_PEN": "1" if self.instant_pen else "0"} if tool == "ektp-agent" else {}
        try:
            p = subprocess.Popen(
                [*prefix, script(tool), "--config", str(conf), *args],
                stdout=log,
                stderr=log,
                start_new_session=True,
                env={**os.environ, **pen, **(env or {})},
            )
        finally:
            log.close()
        self.procs.append(p)
        return p

    def start_central(self, name: str = "central") -> subprocess.Popen[bytes]:
        """A centre process; a second one on this host gets its own instance name (MQTT client id)."""
        if name == "central":
            return self.spawn("ektp-central", "run", name=name)
        conf = self.central_conf.with_name(f"{name}.toml")
        conf.write_text(
            self.central_conf.read_text().replace("[mqtt]\n", f'[mqtt]\ninstance = "{name}"\n', 1)
        )
        return self.spawn("ektp-central", "--config", str(conf), "run", name=name)

    def start_agent(
        self, env: dict[str, str] | None = None, *, simulate: bool = True, prefix: tuple[str, ...] = ()
    ) -> subprocess.Popen[bytes]:
        run = ("run", "--simulate") if simulate else ("run",)
        self.agent = self.spawn("ektp-agent", *run, name="agent", env=env, prefix=prefix)
        deadline = time.monotonic() + 40
        while time.monotonic() < deadline:
            if self.agent.poll() is not None:
                raise AssertionError(
                    f"agent exited with {self.agent.returncode}: {self.log('agent')[-2000:]}"
                )
            p = self.agent_cli("status", "--json", timeout=30)
            if p.stdout.strip() and json.loads(p.stdout).get("service") == "running":
                return self.agent
            time.sleep(0.3)
        raise AssertionError(f"the agent did not come up: {self.log('agent')[-2000:]}")

    def status(self) -> dict[str, Any]:
        p = self.agent_cli("status", "--json", timeout=60)
        doc: dict[str, Any] = json.loads(p.stdout)
        return doc

    def enroll(self, n: int, seed: int = 1) -> list[dict[str, Any]]:
        p = self.agent_cli("enroll", "--synthetic", "--count", str(n), "--seed", str(seed), timeout=600)
        assert p.returncode == 0, p.stderr
        return [json.loads(line) for line in p.stdout.splitlines() if line.strip()]

    def central_packets(self) -> list[dict[str, Any]]:
        p = self.central_cli("packets", "--json")
        assert p.returncode == 0, p.stderr
        rows: list[dict[str, Any]] = json.loads(p.stdout)
        return rows

    def log(self, name: str) -> str:
        path = self.root / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def kill(self, proc: subprocess.Popen[bytes], sig: int = signal.SIGKILL) -> None:
        if proc.poll() is None:
            os.killpg(proc.pid, sig)
        proc.wait(30)

    def close(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                try:
                    os.killpg(p.pid, signal.SIGTERM)
                    p.wait(15)
                except (subprocess.TimeoutExpired, ProcessLookupError):
                    os.killpg(p.pid, signal.SIGKILL)
                    p.wait(5)
            # the simulator child of a SIGKILLed agent lives on in the agent's process group
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGTERM)


@pytest.fixture
def kit(tmp_path: Path) -> Iterator[tuple[Kit, Broker]]:
    """A kiosk and a centre configured and keyed, and their broker running; the test starts the services."""
    broker = Broker(tmp_path / "broker")
    broker.start()
    k = Kit(tmp_path / "kit", broker.port, health_s=1.0)
    k.setup_keys()
    try:
        yield k, broker
    finally:
        k.close()
        broker.stop()
