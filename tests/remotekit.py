"""A test-side centre for remote commands: signs commands (wire.command.sign_command), publishes
them QoS 1 on the kiosk's cmd topic of a real broker, and reads the kiosk's signed results
(verified with the kiosk's public key) from its result topic. Also the kit steps both remote
command suites take: start the agent until its command connection is up, stop it, drive the
simulator."""

from __future__ import annotations

import datetime as dt
import os
import signal
import subprocess
import threading
import time
from collections.abc import Mapping
from typing import Any

import paho.mqtt.client as mqtt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from paho.mqtt.enums import CallbackAPIVersion

from tests.agentkit import Kit, script
from tests.linkkit import wait_for
from wire.command import Command, CommandResult, sign_command, verify_result

NIL_ID = "00000000-0000-0000-0000-000000000000"


def start_with_remote(k: Kit) -> None:
    """Start the kit's agent and wait until its remote commands' connection is up."""
    k.start_agent()
    wait_for(lambda: k.status()["remote"]["link"]["connected"], 15, "the remote commands' connection")


def stop_agent(k: Kit) -> None:
    """SIGTERM the kit's agent; it must exit 0 within 30 s."""
    assert k.agent is not None
    k.agent.send_signal(signal.SIGTERM)
    assert k.agent.wait(30) == 0, k.log("agent")[-2000:]


def sim(k: Kit, *args: str) -> None:
    """`ektp-sim --dir DATA/sim ARGS` (a fault, a resident at the desk); it must succeed."""
    p = subprocess.run(
        [script("ektp-sim"), "--dir", str(k.data_dir / "sim"), *args],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert p.returncode == 0, p.stderr


class CommandSender:
    """Publishes commands to one kiosk and collects its results, verified, by command id."""

    def __init__(
        self,
        port: int,
        kiosk: str,
        centre_key: Ed25519PrivateKey,
        kiosk_public: Ed25519PublicKey,
        *,
        prefix: str = "ektp/v1",
    ) -> None:
        self.kiosk, self.centre_key, self.kiosk_public = kiosk, centre_key, kiosk_public
        self.topic_cmd, self.topic_result = f"{prefix}/{kiosk}/cmd", f"{prefix}/{kiosk}/result"
        self.results: dict[str, list[CommandResult]] = {}
        self.bad_results: list[str] = []  # results that did not verify with the kiosk's key
        self._cond = threading.Condition()
        self._subscribed = threading.Event()
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"test-centre-{os.getpid()}-{time.monotonic_ns()}",
            protocol=mqtt.MQTTv5,
        )
        client.on_connect = lambda c, u, f, rc, p: c.subscribe(self.topic_result, qos=1)
        client.on_subscribe = lambda c, u, mid, rcs, p: self._subscribed.set()
        client.on_message = self._on_message
        client.connect("127.0.0.1", port)
        client.loop_start()
        self._client: mqtt.Client | None = client
        if not self._subscribed.wait(10):
            self.close()
            raise AssertionError("the test centre could not subscribe to the result topic")

    def _on_message(self, _c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        try:
            result = verify_result(bytes(msg.payload), keys=[self.kiosk_public], kiosk=self.kiosk)
        except Exception as exc:
            with self._cond:
                self.bad_results.append(str(exc))
            return
        with self._cond:
            self.results.setdefault(result.command_id, []).append(result)
            self._cond.notify_all()

    def sign(
        self,
        verb: str,
        args: Mapping[str, Any] | None = None,
        *,
        ttl_s: float = 60,
        key: Ed25519PrivateKey | None = None,
        kiosk: str | None = None,
        now: dt.datetime | None = None,
        issuer: str = "tester@centre",
    ) -> tuple[bytes, Command]:
        return sign_command(
            kiosk or self.kiosk, verb, args or {}, key or self.centre_key, issuer=issuer, ttl_s=ttl_s, now=now
        )

    def publish(self, payload: bytes) -> None:
        assert self._client is not None, "closed"
        info = self._client.publish(self.topic_cmd, payload, qos=1)
        info.wait_for_publish(10)

    def send(self, verb: str, args: Mapping[str, Any] | None = None, **kw: Any) -> Command:
        payload, command = self.sign(verb, args, **kw)
        self.publish(payload)
        return command

    def result(self, command_id: str, timeout: float = 30, count: int = 1) -> CommandResult:
        """The ``count``-th result about ``command_id`` (waits for it)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while len(self.results.get(command_id, [])) < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(
                        f"no result #{count} for command {command_id} within {timeout} s"
                        f" (have {sorted(self.results)}; unverifiable: {self.bad_results})"
                    )
                self._cond.wait(left)
            return self.results[command_id][count - 1]

    def call(self, verb: str, args: Mapping[str, Any] | None = None, **kw: Any) -> CommandResult:
        return self.result(self.send(verb, args, **kw).command_id)

    def close(self) -> None:
        """Disconnect; the client is dropped so that its socket pair closes even while a fixture
        still holds this sender."""
        client, self._client = self._client, None
        if client is not None:
            client.disconnect()
            client.loop_stop()


__all__ = ["NIL_ID", "CommandSender"]
