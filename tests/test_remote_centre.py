"""The centre's side of remote commands (issue 13), against a real Mosquitto and a real store:
`ektp-central kiosk cmd` and `kiosk cmd-log` as console scripts, `ektp-central run` storing a
late result, the store's command tables on SQLite and PostgreSQL (and a version 4 store gaining
them), and the web view's command forms over real uvicorn.

The kiosk here is a small stand-in written with paho and wire.command (it verifies each command
with the centre's public key and answers as the test tells it), so that every answer a kiosk
might give, a forged one included, can be produced on demand; tests/test_remote_e2e.py drives
the real `ektp-agent`.
"""

from __future__ import annotations

import contextlib
import json
import queue
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from central.config import CentralConfig, CentralMqtt, CentralWeb
from central.store import SCHEMA_VERSION, CentralStore, open_store
from central.web.auth import set_password
from tests import centralkit
from tests.agentkit import script
from tests.linkkit import wait_for
from tests.netkit import Broker
from tests.webkit import served
from wire.command import Command, CommandError, CommandResult, sign_command, sign_result, verify_command
from wire.keys import CentralPrivateKeys, create_central_keys

KIOSK = "320715-01"
OTHER = "320715-02"
FAULT = {
    "device": "fingerprint",
    "state": "fault",
    "passed": False,
    "detail": "no answer on /dev/ttyAMA0 at 57600 baud",
    "hint": "reseat the fingerprint module's cable",
}


def diag_result(command: Command) -> dict[str, Any]:
    """A diag result as a kiosk reports it: one report per device."""
    ok = [
        {"device": d, "state": "ok", "passed": True, "detail": "answers", "hint": ""}
        for d in ("signature", "iris")
    ]
    return {"devices": [FAULT, *ok]}


# ----------------------------------------------------------------------------- a stand-in kiosk


Answer = Callable[[Command], list[bytes]]


@dataclass
class StandInKiosk:
    """A kiosk's command session: verifies each command with the centre's key and publishes what
    ``answer`` returns (signed results, or anything else) on its result topic. ``hold`` keeps the
    answers until ``release()``."""

    port: int
    kiosk: str
    key: Ed25519PrivateKey
    centre: CentralPrivateKeys
    answer: Answer | None = None
    hold: bool = False
    received: list[Command] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)
    _held: list[bytes] = field(default_factory=list)
    _todo: queue.Queue[bytes | None] = field(default_factory=queue.Queue)

    def __post_init__(self) -> None:
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=f"{self.kiosk}-remote", protocol=mqtt.MQTTv5
        )
        subscribed = threading.Event()
        self.client.on_subscribe = lambda *_a: subscribed.set()
        self.client.on_message = lambda _c, _u, msg: self._todo.put(bytes(msg.payload))
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = 600
        self.client.connect("127.0.0.1", self.port, clean_start=False, properties=props)
        self.client.loop_start()
        self.client.subscribe(f"ektp/v1/{self.kiosk}/cmd", qos=1)
        assert subscribed.wait(10), "no SUBACK"
        self.worker = threading.Thread(target=self._work, name="stand-in-kiosk")
        self.worker.start()

    def sign(
        self, command: Command, status: str, result: dict[str, Any], reason: str = "", key: Any = None
    ) -> bytes:
        r = CommandResult(self.kiosk, command.command_id, command.verb, status, reason, result)
        return sign_result(r, key or self.key)

    def _work(self) -> None:
        while (payload := self._todo.get()) is not None:
            try:
                command = verify_command(payload, keys=[self.centre.signing.public_key()], kiosk=self.kiosk)
            except CommandError as exc:
                self.refused.append(exc.reason)
                continue
            self.received.append(command)
            answers = (self.answer or (lambda c: [self.sign(c, "ok", diag_result(c))]))(command)
            if self.hold:
                self._held += answers
            else:
                self._publish(answers)

    def _publish(self, answers: list[bytes]) -> None:
        for payload in answers:
            self.client.publish(f"ektp/v1/{self.kiosk}/result", payload, qos=1).wait_for_publish(10)

    def release(self) -> None:
        held, self._held = self._held, []
        self._publish(held)

    def close(self) -> None:
        self._todo.put(None)
        self.worker.join(10)
        self.client.disconnect()
        self.client.loop_stop()


class Sniffer:
    """Every message on the broker under ektp/v1/ (to see that nothing was sent)."""

    def __init__(self, port: int) -> None:
        self.seen: list[str] = []
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="sniffer", protocol=mqtt.MQTTv5)
        subscribed = threading.Event()
        self.client.on_subscribe = lambda *_a: subscribed.set()
        self.client.on_message = lambda _c, _u, msg: self.seen.append(msg.topic)
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        self.client.subscribe("ektp/v1/#", qos=1)
        assert subscribed.wait(10)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


# ----------------------------------------------------------------------------- the centre


@dataclass
class Centre:
    root: Path
    broker: Broker
    keys: CentralPrivateKeys
    kiosk_key: Ed25519PrivateKey
    conf: Path
    db: str

    def cli(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [script("ektp-central"), "--config", str(self.conf), *args],
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def cmd(self, *args: str, timeout_s: float = 10) -> subprocess.CompletedProcess[str]:
        return self.cli("kiosk", "cmd", *args, "--timeout", str(timeout_s))

    def log(self, kiosk: str = KIOSK) -> list[dict[str, Any]]:
        p = self.cli("kiosk", "cmd-log", kiosk, "--json")
        assert p.returncode == 0, p.stderr
        entries: list[dict[str, Any]] = json.loads(p.stdout)
        return entries

    def config(self, **web: Any) -> CentralConfig:
        return CentralConfig(
            mqtt=CentralMqtt(host="127.0.0.1", port=self.broker.port, instance="test"),
            store_url=self.db,
            central_private_key=self.root / "central.key",
            web=CentralWeb(**web),
        )

    @contextlib.contextmanager
    def kiosk(self, **kwargs: Any) -> Iterator[StandInKiosk]:
        k = StandInKiosk(self.broker.port, KIOSK, self.kiosk_key, self.keys, **kwargs)
        try:
            yield k
        finally:
            k.close()


@pytest.fixture
def centre(tmp_path: Path) -> Iterator[Centre]:
    broker = Broker(tmp_path / "broker")
    broker.start()
    root = tmp_path / "centre"
    root.mkdir()
    keys = create_central_keys(root / "central.key")
    kiosk_key = Ed25519PrivateKey.generate()
    db = str(root / "central.db")
    with open_store(db) as store:
        store.add_kiosk(KIOSK, centralkit.Kiosk(KIOSK, kiosk_key, keys).public_pem)
    conf = root / "central.toml"
    conf.write_text(
        f'[mqtt]\nhost = "127.0.0.1"\nport = {broker.port}\ninstance = "test"\n[store]\nurl = "{db}"\n'
        f'[keys]\ncentral_private_key = "{root / "central.key"}"\n'
    )
    try:
        yield Centre(root, broker, keys, kiosk_key, conf, db)
    finally:
        broker.stop()


# ----------------------------------------------------------------------------- the store


@pytest.fixture(params=centralkit.BACKENDS)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[CentralStore]:
    for url in centralkit.store_url(request.param, tmp_path):
        with open_store(url) as s:
            yield s


def _command(kiosk: str = KIOSK, verb: str = "diag", **kwargs: Any) -> tuple[bytes, Command]:
    return sign_command(kiosk, verb, {}, Ed25519PrivateKey.generate(), issuer="alice", **kwargs)


def _result(command: Command, status: str, reason: str = "", **result: Any) -> tuple[CommandResult, bytes]:
    r = CommandResult(command.kiosk, command.command_id, command.verb, status, reason, result)
    return r, sign_result(r, Ed25519PrivateKey.generate())


def test_a_command_keeps_its_first_result_and_a_replays_refusal_is_listed_beside_it(
    store: CentralStore,
) -> None:
    payload, command = _command()
    store.record_command(command, payload, via="cli")
    assert store.command_log(KIOSK)[0]["status"] == "sending"
    store.command_sent(command.command_id)
    assert store.command_log(KIOSK)[0]["status"] == "pending"
    first, signed = _result(command, "ok", devices=[FAULT])
    assert store.record_result(first, signed) is True
    assert (
        store.record_result(first, signed) is False
    )  # the same bytes again (run and kiosk cmd both heard it)
    replay, replay_signed = _result(command, "refused", "replay: command already executed")
    assert store.record_result(replay, replay_signed) is True
    (entry,) = store.command_log(KIOSK)
    assert (entry["status"], entry["result"], entry["issuer"], entry["via"], entry["recorded"]) == (
        "ok",
        {"devices": [FAULT]},
        "alice",
        "cli",
        True,
    )
    assert [(o["status"], o["reason"]) for o in entry["other_results"]] == [
        ("refused", "replay: command already executed")
    ]
    assert store.command_entry(KIOSK, command.command_id) == entry
    assert store.command_log(OTHER) == []


def test_statuses_follow_the_broker_and_the_expiry(store: CentralStore) -> None:
    now = datetime.now(UTC)
    unsent_payload, unsent = _command(ttl_s=60)
    store.record_command(unsent, unsent_payload, via="web")
    store.command_sent(unsent.command_id, error="nobody subscribes to ektp/v1/320715-01/cmd")
    pending_payload, pending = _command(verb="status", ttl_s=60)
    store.record_command(pending, pending_payload, via="cli")
    store.command_sent(pending.command_id)
    log = {e["command_id"]: e for e in store.command_log(KIOSK, now=now)}
    assert (log[unsent.command_id]["status"], log[unsent.command_id]["reason"]) == (
        "unsent",
        "nobody subscribes to ektp/v1/320715-01/cmd",
    )
    assert log[pending.command_id]["status"] == "pending"
    later = {e["command_id"]: e["status"] for e in store.command_log(KIOSK, now=now + timedelta(minutes=2))}
    assert later[pending.command_id] == "unanswered"
    # a kiosk's result for a command this centre never sent is kept and shown, marked
    stray, stray_signed = _result(_command()[1], "refused", "bad-signature: not the centre's key")
    store.record_result(stray, stray_signed)
    entries = store.command_log(KIOSK)
    assert [e["recorded"] for e in entries] == [True, True, False]
    assert entries[-1]["reason"] == "bad-signature: not the centre's key"
    with pytest.raises(ValueError, match="recorded already"):
        store.record_command(pending, pending_payload, via="cli")
    with pytest.raises(ValueError, match="source"):
        store.record_command(_command()[1], b"x", via="email")


@pytest.mark.parametrize("backend", centralkit.BACKENDS)
def test_a_version_4_store_gains_the_command_tables_on_open(backend: str, tmp_path: Path) -> None:
    for url in centralkit.store_url(backend, tmp_path):
        with open_store(url) as s:
            s.add_kiosk(KIOSK, centralkit.kiosk(KIOSK, create_central_keys(tmp_path / "c.key")).public_pem)
        centralkit.run_sql(
            url,
            [
                ("DROP TABLE command_results", ()),
                ("DROP TABLE commands", ()),
                ("UPDATE meta SET value = '4' WHERE key = 'schema_version'", ()),
            ],
        )
        with pytest.raises(Exception, match="commands"):
            centralkit.fetch_sql(url, "SELECT COUNT(*) FROM commands")
        with open_store(url) as s:
            assert s.schema_version() == SCHEMA_VERSION == 5
            assert [k["kiosk"] for k in s.kiosks()] == [KIOSK]
            payload, command = _command()
            s.record_command(command, payload, via="cli")
            assert [e["command_id"] for e in s.command_log(KIOSK)] == [command.command_id]


# ----------------------------------------------------------------------------- kiosk cmd


def test_diag_brings_back_the_fault_and_its_hint_and_the_log_shows_who_sent_it(centre: Centre) -> None:
    with centre.kiosk() as kiosk:
        p = centre.cmd(KIOSK, "diag", "--as", "alice", "--json")
        assert p.returncode == 0, p.stderr
        doc = json.loads(p.stdout)
        assert {k: doc[k] for k in ("kiosk", "verb", "status", "reason", "issuer", "args")} == {
            "kiosk": KIOSK,
            "verb": "diag",
            "status": "ok",
            "reason": "",
            "issuer": "alice",
            "args": {"devices": []},
        }
        assert doc["result"]["devices"][0] == FAULT
        assert doc["expires_at"] > doc["issued_at"] and doc["finished_at"]
        assert [c.command_id for c in kiosk.received] == [doc["command_id"]]
        text = centre.cmd(KIOSK, "diag", "fingerprint")
        assert text.returncode == 0, text.stderr
        assert "kiosk 320715-01: diag ok" in text.stdout
        assert "fingerprint  fault: no answer on /dev/ttyAMA0 at 57600 baud" in text.stdout
        assert "hint: reseat the fingerprint module's cable" in text.stdout
        assert kiosk.received[-1].args == {"devices": ["fingerprint"]}
    log = centre.log()
    assert [(e["verb"], e["status"], e["via"]) for e in log] == [("diag", "ok", "cli"), ("diag", "ok", "cli")]
    assert log[1]["issuer"] == "alice" and log[1]["command_id"] == doc["command_id"]
    table = centre.cli("kiosk", "cmd-log", KIOSK)
    assert (
        table.returncode == 0
        and "fingerprint fault" in table.stdout
        and "devices=fingerprint" in table.stdout
    )


def test_refused_and_failed_results_exit_1_with_their_reason(centre: Centre) -> None:
    def answer(c: Command) -> list[bytes]:
        if c.verb == "sync":
            return [kiosk.sign(c, "refused", {}, "verb-disabled: sync is not in [remote] verbs")]
        return [kiosk.sign(c, "failed", {"device": "iris"}, "iris: no USB device 1209:0001")]

    with centre.kiosk(answer=answer) as kiosk:
        p = centre.cmd(KIOSK, "sync", "--json")
        assert p.returncode == 1 and json.loads(p.stdout)["status"] == "refused", p.stderr
        assert json.loads(p.stdout)["reason"] == "verb-disabled: sync is not in [remote] verbs"
        p = centre.cmd(KIOSK, "reopen", "iris")
        assert p.returncode == 1
        assert "reopen failed" in p.stdout and "reason: iris: no USB device 1209:0001" in p.stdout
    assert [e["status"] for e in centre.log()] == ["failed", "refused"]


def test_an_unregistered_kiosk_is_exit_1_and_nothing_is_signed_or_sent(centre: Centre) -> None:
    sniffer = Sniffer(centre.broker.port)
    try:
        p = centre.cmd(OTHER, "status")
        time.sleep(0.5)
    finally:
        sniffer.close()
    assert p.returncode == 1
    assert "kiosk 320715-02 is not registered: nothing sent" in p.stderr
    assert sniffer.seen == [] and centre.log(OTHER) == []


def test_no_result_in_time_is_a_timeout_and_run_stores_the_late_one_but_not_a_forged_one(
    centre: Centre,
) -> None:
    with centre.kiosk(hold=True) as kiosk:
        p = centre.cmd(KIOSK, "logs", "--lines", "20", "--since", "2h", "--json", timeout_s=1)
        assert p.returncode == 1
        doc = json.loads(p.stdout)
        assert (doc["status"], doc["result"]) == ("timeout", {})
        assert "stays valid until" in p.stderr and "kiosk cmd-log 320715-01" in p.stderr
        assert kiosk.received[0].args["lines"] == 20 and kiosk.received[0].args["since"]
        (entry,) = centre.log()
        assert entry["status"] == "pending"
        run = subprocess.Popen(
            [script("ektp-central"), "--config", str(centre.conf), "run"],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        try:
            _wait_subscribed(centre)
            command = kiosk.received[0]
            forged = kiosk.sign(command, "ok", {"lines": ["forged"]}, key=Ed25519PrivateKey.generate())
            kiosk.client.publish(f"ektp/v1/{KIOSK}/result", forged, qos=1).wait_for_publish(10)
            kiosk.release()  # the real answer: "lines"
            wait_for(lambda: centre.log()[0]["status"] == "ok", 20, "run to store the late result")
        finally:
            run.terminate()
            out, _ = run.communicate(timeout=30)
    (entry,) = centre.log()
    assert entry["result"] == diag_result(command) and entry["other_results"] == []
    assert "does not verify as its own (bad-signature)" in out, out


def _wait_subscribed(centre: Centre) -> None:
    """Until `run` hears results: a probe result of another (unregistered) kiosk is logged as unverifiable."""
    probe = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="probe", protocol=mqtt.MQTTv5)
    probe.connect("127.0.0.1", centre.broker.port)
    probe.loop_start()
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            # the fleet shows a status only once run consumes: then its subscriptions are in place
            probe.publish("ektp/v1/probe-kiosk/status", b'{"state": "online"}', qos=1).wait_for_publish(5)
            p = centre.cli("fleet", "--json")
            if any(r["kiosk"] == "probe-kiosk" for r in json.loads(p.stdout or "[]")):
                return
            time.sleep(0.3)
        raise AssertionError("ektp-central run did not subscribe")
    finally:
        probe.disconnect()
        probe.loop_stop()


def test_a_forged_result_while_waiting_is_not_stored_and_the_real_one_is(centre: Centre) -> None:
    def answer(c: Command) -> list[bytes]:
        other_kiosks = kiosk.sign(c, "ok", {"lines": ["from another key"]}, key=Ed25519PrivateKey.generate())
        return [other_kiosks, b"EKTR garbage", kiosk.sign(c, "ok", {"lines": ["a real line"]})]

    with centre.kiosk(answer=answer) as kiosk:
        p = centre.cmd(KIOSK, "logs", "--json")
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["result"] == {"lines": ["a real line"]}
    assert "2 result(s) on kiosk 320715-01's topic did not verify" in p.stderr
    assert "bad-signature" in p.stderr and "truncated" in p.stderr
    (entry,) = centre.log()
    assert entry["result"] == {"lines": ["a real line"]} and entry["other_results"] == []


def test_a_kiosk_that_never_subscribed_gets_nothing_and_the_command_is_unsent(centre: Centre) -> None:
    p = centre.cmd(KIOSK, "status")
    assert p.returncode == 1
    assert "nobody subscribes to ektp/v1/320715-01/cmd" in p.stderr
    (entry,) = centre.log()
    assert entry["status"] == "unsent" and "nobody subscribes" in entry["send_error"]


def test_a_broker_that_is_down_is_named_and_nothing_is_recorded(centre: Centre) -> None:
    centre.broker.stop()
    p = centre.cmd(KIOSK, "status")
    assert p.returncode == 1 and "cannot connect to the broker at 127.0.0.1:" in p.stderr
    assert centre.log() == []


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (["diag", "--as", "al;ice"], "--as 'al;ice'"),
        (["logs", "--lines", "0"], "0 is not in the range 1<=x<=1000"),
        (["logs", "--since", "yesterday"], "--since 'yesterday': expected an RFC 3339 time"),
        (["resubmit"], "name the PACKET_IDs to resubmit, or pass --rejected"),
        (["resubmit", "not-a-uuid"], "PACKET_ID 'not-a-uuid' is not a packet id"),
        (["health-interval", "5"], "5 is not in the range 10<=x<=3600"),
        (["reopen", "printer"], "'printer' is not one of"),
        (["shutdown"], "No such command 'shutdown'"),
        (["status", "--ttl", "604801"], "604801 is not in the range"),
    ],
)
def test_usage_errors_exit_2_before_anything_is_sent(centre: Centre, args: list[str], said: str) -> None:
    p = centre.cmd(KIOSK, *args)
    assert p.returncode == 2, p.stdout + p.stderr
    assert said in p.stderr
    assert centre.log() == []


def test_a_centre_key_that_cannot_be_read_is_a_config_error(centre: Centre) -> None:
    (centre.root / "central.key").unlink()
    p = centre.cmd(KIOSK, "status")
    assert p.returncode == 2 and "central_private_key" in p.stderr


def test_the_acl_names_a_centre_user_that_may_not_write_commands(tmp_path: Path) -> None:
    """The broker answers a forbidden publish with PUBACK "Not authorized": named, recorded unsent."""
    acl = tmp_path / "acl"
    acl.write_text(
        f"user ektp-central\ntopic read ektp/v1/+/result\n\nuser {KIOSK}\ntopic read ektp/v1/{KIOSK}/cmd\n"
    )
    broker = Broker(tmp_path / "broker", extra_config=f"acl_file {acl}\n")
    broker.start()
    try:
        keys = create_central_keys(tmp_path / "central.key")
        kiosk_key = Ed25519PrivateKey.generate()
        db = str(tmp_path / "central.db")
        with open_store(db) as s:
            s.add_kiosk(KIOSK, centralkit.Kiosk(KIOSK, kiosk_key, keys).public_pem)
        conf = tmp_path / "central.toml"
        conf.write_text(
            f'[mqtt]\nhost = "127.0.0.1"\nport = {broker.port}\nusername = "ektp-central"\n[store]\nurl = "{db}"\n'
            f'[keys]\ncentral_private_key = "{tmp_path / "central.key"}"\n'
        )
        p = subprocess.run(
            [script("ektp-central"), "--config", str(conf), "kiosk", "cmd", KIOSK, "status"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert (
            p.returncode == 1
            and "the broker refused the command" in p.stderr
            and "Not authorized" in p.stderr
        )
        with open_store(db) as s:
            assert [e["status"] for e in s.command_log(KIOSK)] == ["unsent"]
    finally:
        broker.stop()


# ----------------------------------------------------------------------------- the web view


USER, PASSWORD = "alice", "correct horse battery"


def _users(tmp_path: Path, *names: str) -> Path:
    users = tmp_path / "web-users"
    for name in names:
        set_password(users, name, PASSWORD)
    return users


def _form(html: str, verb: str) -> dict[str, str]:
    """The hidden fields of the verb's form on a page."""
    start = html.index(f'data-verb="{verb}"')
    chunk = html[start : html.index("</form>", start)]
    token = chunk.split('name="csrf" value="', 1)[1].split('"', 1)[0]
    return {"csrf": token, "verb": verb}


def test_a_view_without_logins_offers_no_commands_and_refuses_a_post(centre: Centre) -> None:
    with centre.kiosk() as kiosk, served(centre.config()) as client:
        page = client.get(f"/kiosk/{KIOSK}")
        assert page.status_code == 200
        assert 'id="command-forms"' not in page.text and "needs a login" in page.text
        p = client.post(
            f"/kiosk/{KIOSK}/commands",
            data={"verb": "sync", "csrf": "1.x"},
            headers={"origin": str(client.base_url)},
        )
        assert p.status_code == 403 and "sends no commands" in p.text
        assert kiosk.received == []
    assert centre.log() == []


def test_a_logged_in_user_runs_diag_from_the_kiosk_page_and_sees_the_fault_and_its_hint(
    centre: Centre, tmp_path: Path
) -> None:
    users = _users(tmp_path, USER)
    with centre.kiosk() as kiosk, served(centre.config(users_file=users)) as client:
        client.auth = (USER, PASSWORD)
        page = client.get(f"/kiosk/{KIOSK}")
        assert page.status_code == 200 and 'id="command-forms"' in page.text
        assert "<script" not in page.text
        csp = page.headers["content-security-policy"]
        assert "default-src 'none'" in csp and "script-src" not in csp and "form-action 'self'" in csp
        fields = _form(page.text, "diag")
        sent = client.post(
            f"/kiosk/{KIOSK}/commands",
            data={**fields, "devices": ["fingerprint", "iris"]},
            headers={"origin": str(client.base_url)},
        )
        assert sent.status_code == 303, sent.text
        where = sent.headers["location"]
        assert where.startswith(f"/kiosk/{KIOSK}/commands?cmd=")
        deadline = time.monotonic() + 20
        while True:
            shown = client.get(where)
            if 'data-status="ok"' in shown.text or time.monotonic() > deadline:
                break
            assert '<meta http-equiv="refresh" content="2">' in shown.text  # the pending page reloads itself
            time.sleep(0.3)
        assert shown.status_code == 200 and 'id="result-devices"' in shown.text
        assert "reseat the fingerprint module&#39;s cable" in shown.text
        assert '<meta http-equiv="refresh"' not in shown.text  # the result is in: no more reloads
        assert kiosk.received[0].args == {"devices": ["fingerprint", "iris"]}
        assert kiosk.received[0].issuer == USER
        # the kiosk page lists it too
        again = client.get(f"/kiosk/{KIOSK}")
        assert f'data-command="{kiosk.received[0].command_id}" data-status="ok"' in again.text
    (entry,) = centre.log()
    assert (entry["issuer"], entry["via"], entry["status"]) == (USER, "web", "ok")


def test_posts_from_another_site_without_the_token_or_with_another_users_token_are_refused(
    centre: Centre, tmp_path: Path
) -> None:
    users = _users(tmp_path, USER, "bob")
    with centre.kiosk() as kiosk, served(centre.config(users_file=users)) as client:
        own = str(client.base_url)
        alice = _form(client.get(f"/kiosk/{KIOSK}/commands", auth=(USER, PASSWORD)).text, "sync")
        bob = _form(client.get(f"/kiosk/{KIOSK}/commands", auth=("bob", PASSWORD)).text, "sync")
        url = f"/kiosk/{KIOSK}/commands"
        tries = {
            "no login": client.post(url, data=alice, headers={"origin": own}),
            "another site": client.post(
                url, data=alice, headers={"origin": "https://evil.example"}, auth=(USER, PASSWORD)
            ),
            "a null origin": client.post(url, data=alice, headers={"origin": "null"}, auth=(USER, PASSWORD)),
            "no origin or referer": client.post(url, data=alice, auth=(USER, PASSWORD)),
            "no token": client.post(
                url, data={"verb": "sync"}, headers={"origin": own}, auth=(USER, PASSWORD)
            ),
            "bob's token": client.post(url, data=bob, headers={"origin": own}, auth=(USER, PASSWORD)),
            "a json body": client.post(url, json=alice, headers={"origin": own}, auth=(USER, PASSWORD)),
        }
        assert {what: r.status_code for what, r in tries.items()} == {
            "no login": 401,
            "another site": 403,
            "a null origin": 403,
            "no origin or referer": 403,
            "no token": 403,
            "bob's token": 403,
            "a json body": 415,
        }
        assert "not sent from this site" in tries["another site"].text
        assert "not yours" in tries["bob's token"].text
        bad = client.post(
            url,
            data={**_form(client.get(url, auth=(USER, PASSWORD)).text, "health-interval"), "seconds": "5"},
            headers={"referer": f"{own}{url}"},
            auth=(USER, PASSWORD),
        )
        assert bad.status_code == 400 and "seconds must be a whole number, 10-3600" in bad.text
        time.sleep(0.5)
        assert kiosk.received == []
        ok = client.post(url, data=alice, headers={"referer": f"{own}{url}"}, auth=(USER, PASSWORD))
        assert ok.status_code == 303
    assert [e["verb"] for e in centre.log()] == ["sync"]


def test_a_web_command_to_a_kiosk_nobody_serves_says_so_and_lists_it_unsent(
    centre: Centre, tmp_path: Path
) -> None:
    users = _users(tmp_path, USER)
    with served(centre.config(users_file=users)) as client:
        client.auth = (USER, PASSWORD)
        url = f"/kiosk/{KIOSK}/commands"
        p = client.post(
            url, data=_form(client.get(url).text, "status"), headers={"origin": str(client.base_url)}
        )
        assert p.status_code == 502 and "nobody subscribes" in p.text
        assert 'data-status="unsent"' in p.text
    assert [e["status"] for e in centre.log()] == ["unsent"]
