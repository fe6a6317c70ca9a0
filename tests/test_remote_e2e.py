"""Remote commands end to end, as issue 13's "What must show" lists them, with the console scripts
at both ends: a real Mosquitto, `ektp-central run`, `ektp-central kiosk cmd` and `kiosk cmd-log`,
`ektp-agent run --simulate` and a fault injected with `ektp-sim`.

- diag of a kiosk with an injected fault brings the fault and its hint back to the centre;
- logs carry no NIK, name or address of the synthetic residents (grepped in the output and in
  the centre's store file);
- resubmit and sync act: rejected packets reach the centre's store, a link waiting out its
  reconnect backoff connects at once;
- a replayed, expired, re-targeted, unsigned and kiosk-signed command change nothing, and
  each one's signed refusal reaches the centre's log;
- a command sent to an offline kiosk runs when it comes back, and one that expired meanwhile
  does not;
- remote commands disabled in the kiosk's config are refused;
- the broker ACL of docs/operations.md (its very text, on a Mosquitto with logins): the whole
  loop works through it, and a kiosk cannot write its own cmd topic;
- the walk-through of docs/operations.md section 13 runs as written;
- one click in a real browser (headless Chromium) on the kiosk page's diag button.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import re
import sqlite3
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from hw_sim.residents import synthetic_resident
from tests.agentkit import Kit
from tests.dockit import REPO, Session
from tests.linkkit import wait_for
from tests.netkit import Broker, free_port
from tests.remotekit import sim, stop_agent
from tests.remotekit import start_with_remote as start_agent
from wire.command import sign_command
from wire.keys import load_central_private, load_kiosk_private

KIOSK = "320715-01"
OTHER = "320715-02"


# ----------------------------------------------------------------------------- helpers


def cmd(k: Kit, *args: str, timeout_s: float = 20) -> tuple[int, dict[str, Any], str]:
    """`ektp-central kiosk cmd KIOSK ARGS --json`: (exit code, its JSON, its stderr)."""
    p = k.central_cli("kiosk", "cmd", k.kiosk_id, *args, "--json", "--timeout", str(timeout_s))
    assert p.stdout.strip(), p.stderr
    return p.returncode, json.loads(p.stdout), p.stderr


def cmd_log(k: Kit) -> list[dict[str, Any]]:
    p = k.central_cli("kiosk", "cmd-log", k.kiosk_id, "--json")
    assert p.returncode == 0, p.stderr
    rows: list[dict[str, Any]] = json.loads(p.stdout)
    return rows


def wait_consuming(k: Kit) -> None:
    """Until `ektp-central run` consumes (the kiosk shows online in the fleet)."""

    def online() -> bool:
        p = k.central_cli("fleet", "--json")
        return any(r["kiosk"] == k.kiosk_id and r["online"] for r in json.loads(p.stdout or "[]"))

    wait_for(online, 30, "the centre to see the kiosk online", step=0.3)


def edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, (old, text)
    path.write_text(text.replace(old, new, 1))


class Raw:
    """A plain MQTT client, for what `kiosk cmd` never sends: forgeries and replays."""

    def __init__(
        self, port: int, client_id: str, *, username: str | None = None, password: str | None = None
    ):
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
        if username:
            self.client.username_pw_set(username, password)
        self.pubacks: dict[int, str] = {}
        self.got: list[str] = []
        self.subscribed = threading.Event()
        self.client.on_publish = lambda _c, _u, mid, rc, _p: self.pubacks.__setitem__(mid, str(rc))
        self.client.on_message = lambda _c, _u, msg: self.got.append(msg.topic)
        self.client.on_subscribe = lambda *_a: self.subscribed.set()
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def publish(self, topic: str, payload: bytes) -> str:
        """The broker's PUBACK reason."""
        info = self.client.publish(topic, payload, qos=1)
        wait_for(lambda: info.mid in self.pubacks, 10, f"the PUBACK of {topic}")
        return self.pubacks[info.mid]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@contextlib.contextmanager
def running(k: Kit, broker: Broker) -> Iterator[None]:
    k.start_central()
    try:
        start_agent(k)
        wait_consuming(k)
        yield
    finally:
        k.close()


# ----------------------------------------------------------------------------- the verbs


@pytest.fixture
def fresh(tmp_path: Path) -> Iterator[tuple[Kit, Broker]]:
    """A kiosk and a centre with their keys, the kiosk NOT yet registered at the centre."""
    broker = Broker(tmp_path / "broker")
    broker.start()
    k = Kit(tmp_path / "kit", broker.port, health_s=1.0)
    for p in (k.central_cli("keys", "init"), k.agent_cli("keys", "init")):
        assert p.returncode == 0, p.stderr
    try:
        yield k, broker
    finally:
        k.close()
        broker.stop()


@pytest.mark.timeout(300)
def test_diag_logs_resubmit_and_sync_from_the_centre(fresh: tuple[Kit, Broker]) -> None:
    k, broker = fresh
    # a link that, once cut, waits 60-120 s before it tries again (unless asked to sync)
    edit(
        k.agent_conf,
        "reconnect_min_s = 0.2\nreconnect_max_s = 1\n",
        "reconnect_min_s = 60\nreconnect_max_s = 120\n",
    )
    with running(k, broker):
        # the centre does not know the kiosk yet: its enrollments are rejected and held on the kiosk
        enrolled = k.enroll(2, seed=1)
        wait_for(lambda: k.status()["queue"]["rejected"] == 2, 30, "two rejected packets on the kiosk")
        p = k.central_cli("kiosk", "cmd", KIOSK, "status")
        assert p.returncode == 1 and "kiosk 320715-01 is not registered: nothing sent" in p.stderr
        p = k.central_cli("kiosk", "add", KIOSK, "--public-key", str(k.data_dir / "kiosk.key.pub"))
        assert p.returncode == 0, p.stderr

        # resubmit acts: the rejected packets reach the centre's store
        code, doc, _ = cmd(k, "resubmit", "--rejected", "--as", "ops desk")
        assert (code, doc["status"], doc["result"]["resubmitted"]) == (0, "ok", 2), doc
        wanted = {r["packet_id"] for r in enrolled}
        wait_for(
            lambda: {p["packet_id"] for p in k.central_packets()} == wanted,
            30,
            "the resubmitted packets stored",
        )

        # diag of an injected fault: the fault and the technician's hint, at the centre
        sim(k, "fault", "fingerprint", "unplug")
        code, doc, _ = cmd(k, "diag")
        assert (code, doc["status"]) == (1, "failed"), doc
        assert doc["reason"].startswith("fingerprint: fault"), doc["reason"]
        devices = {d["device"]: d for d in doc["result"]["devices"]}
        local = json.loads(k.agent_cli("diag", "fingerprint", "--json").stdout)["devices"][0]
        assert devices["fingerprint"]["state"] == "fault" and devices["fingerprint"]["hint"]
        assert (devices["fingerprint"]["detail"], devices["fingerprint"]["hint"]) == (
            local["detail"],
            local["hint"],
        )
        assert all(devices[d]["state"] == "ok" for d in ("signature", "iris", "camera"))
        text = k.central_cli("kiosk", "cmd", KIOSK, "diag", "fingerprint")
        assert text.returncode == 1
        assert f"hint: {local['hint']}" in text.stdout and "kiosk 320715-01: diag failed" in text.stdout
        sim(k, "clear", "fingerprint")

        # logs: the enrollments are there; no resident's NIK, name or address
        k.enroll(1, seed=3)
        code, doc, _ = cmd(k, "logs", "--lines", "1000")
        lines = doc["result"]["lines"]
        assert code == 0 and any("committed enrollment" in line for line in lines), lines
        stored = Path(k.central_conf.parent / "central.db").read_bytes()
        out = json.dumps(doc)
        for seed in (1, 2, 3):
            resident = synthetic_resident(seed)
            for personal in (resident.nik, resident.name, resident.address):
                assert personal not in out, f"resident {seed}'s {personal!r} in the logs"
                assert personal.encode() not in stored, (
                    f"resident {seed}'s {personal!r} in the centre's store"
                )
        with sqlite3.connect(k.central_conf.parent / "central.db") as db:
            (kept,) = db.execute("SELECT COUNT(*) FROM command_results WHERE verb = 'logs'").fetchone()
        assert kept == 1

        # sync acts: a link cut by a session takeover waits out its backoff, unless asked
        wait_for(lambda: k.status()["link"]["connected"], 10, "the link")
        thief = Raw(broker.port, f"ektp-agent-{KIOSK}")  # the link's client id: the broker drops the link
        thief.close()
        wait_for(lambda: not k.status()["link"]["connected"], 10, "the link cut")
        time.sleep(2)
        assert not k.status()["link"]["connected"], "still in its 30 s+ backoff"
        asked = time.monotonic()
        code, doc, _ = cmd(k, "sync")
        assert (code, doc["status"]) == (0, "ok"), doc
        wait_for(lambda: k.status()["link"]["connected"], 15, "the link back at once after the sync")
        assert time.monotonic() - asked < 15

    log = cmd_log(k)
    assert [(e["verb"], e["status"]) for e in reversed(log)] == [
        ("resubmit", "ok"),
        ("diag", "failed"),
        ("diag", "failed"),
        ("logs", "ok"),
        ("sync", "ok"),
    ]
    assert log[-1]["issuer"] == "ops desk" and {e["via"] for e in log} == {"cli"}


@pytest.fixture
def kit_running(kit: tuple[Kit, Broker]) -> Iterator[tuple[Kit, Broker]]:
    k, broker = kit
    with running(k, broker):
        yield k, broker


def test_forged_commands_change_nothing_and_their_refusals_reach_the_centre(
    kit_running: tuple[Kit, Broker],
) -> None:
    k, broker = kit_running
    code, first, _ = cmd(k, "health-interval", "30")
    assert (code, first["status"], first["result"]["health_interval_s"]) == (0, "ok", 30), first
    assert k.agent_cli("config", "reset-remote").returncode == 0
    with sqlite3.connect(k.central_conf.parent / "central.db") as db:
        (signed,) = db.execute(
            "SELECT payload FROM commands WHERE command_id = ?", [first["command_id"]]
        ).fetchone()
    centre_key = load_central_private(k.central_conf.parent / "central.key").signing
    kiosk_key = load_kiosk_private(k.data_dir / "kiosk.key")
    past = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)
    expired, expired_cmd = sign_command(
        KIOSK, "health-interval", {"seconds": 40}, centre_key, issuer="x", ttl_s=60, now=past
    )
    retargeted, retargeted_cmd = sign_command(
        OTHER, "health-interval", {"seconds": 40}, centre_key, issuer="x"
    )
    unsigned, unsigned_cmd = sign_command(KIOSK, "health-interval", {"seconds": 40}, centre_key, issuer="x")
    unsigned = unsigned[:-64] + bytes(64)
    by_kiosk, by_kiosk_cmd = sign_command(KIOSK, "health-interval", {"seconds": 40}, kiosk_key, issuer="x")
    raw = Raw(broker.port, "forger")
    try:
        for payload in (bytes(signed), expired, retargeted, unsigned, by_kiosk):
            assert raw.publish(f"ektp/v1/{KIOSK}/cmd", payload) == "Success"
    finally:
        raw.close()

    def refusals() -> dict[str, tuple[str, str]]:
        return {e["command_id"]: (e["status"], e["reason"]) for e in cmd_log(k) if not e["recorded"]}

    wait_for(lambda: len(refusals()) == 4, 30, "four refusals stored by run", step=0.5)
    found = refusals()
    assert found[expired_cmd.command_id][0] == "expired"
    assert found[retargeted_cmd.command_id][0] == "refused"
    assert found[retargeted_cmd.command_id][1].startswith("wrong-kiosk")
    assert found[unsigned_cmd.command_id][1].startswith("bad-signature")
    assert found[by_kiosk_cmd.command_id][1].startswith("bad-signature")
    (original,) = [e for e in cmd_log(k) if e["recorded"]]
    assert original["status"] == "ok", "the replay's refusal does not replace the first answer"
    assert [(o["status"], o["reason"][:6]) for o in original["other_results"]] == [("refused", "replay")]
    assert k.status()["remote"]["overrides"] == {}, "nothing changed the kiosk"
    table = k.central_cli("kiosk", "cmd-log", KIOSK).stdout
    assert "(not sent from here)" in table and "ok +1" in table


def test_an_offline_kiosk_runs_a_command_when_it_returns_but_not_an_expired_one_and_its_config_can_refuse(
    kit_running: tuple[Kit, Broker],
) -> None:
    k, _broker = kit_running
    stop_agent(k)
    code, later, err = cmd(k, "health-interval", "30", "--ttl", "600", timeout_s=1)
    assert (code, later["status"]) == (1, "timeout") and "stays valid until" in err
    code, short, _ = cmd(k, "selftest-interval", "20", "--ttl", "2", timeout_s=1)
    assert (code, short["status"]) == (1, "timeout")
    assert [e["status"] for e in cmd_log(k)] == ["pending", "pending"]
    time.sleep(2.5)
    start_agent(k)

    def statuses() -> dict[str, str]:
        return {e["command_id"]: e["status"] for e in cmd_log(k)}

    wait_for(lambda: "pending" not in statuses().values(), 30, "run to store both late results", step=0.5)
    assert statuses() == {later["command_id"]: "ok", short["command_id"]: "expired"}
    overrides = k.status()["remote"]["overrides"]
    assert set(overrides) == {"health-interval"}, "the expired command did not run"

    # the kiosk's config: a verb outside [remote] verbs is refused, then every verb
    stop_agent(k)
    k.write_configs(k.port, 1.0, '[remote]\nverbs = ["status", "logs"]\n')
    start_agent(k)
    code, doc, _ = cmd(k, "diag")
    assert (code, doc["status"]) == (1, "refused") and "[remote] verbs" in doc["reason"], doc
    assert cmd(k, "status")[0] == 0
    stop_agent(k)
    k.write_configs(k.port, 1.0, "[remote]\nenabled = false\n")
    start_agent(k)
    code, doc, _ = cmd(k, "status")
    assert (code, doc["status"]) == (1, "refused") and "[remote] enabled = false" in doc["reason"], doc


# ----------------------------------------------------------------------------- the ACL


def documented_acl() -> str:
    """The ACL file of docs/operations.md, as written there."""
    text = (REPO / "docs" / "operations.md").read_text()
    m = re.search(r"<!-- test: file ektp\.acl -->\n```\n(.*?)```", text, re.S)
    assert m, "operations.md section 8 has the ACL file"
    return m.group(1)


def test_the_documented_acl_carries_commands_and_keeps_a_kiosk_off_its_own_cmd_topic(tmp_path: Path) -> None:
    acl = tmp_path / "ektp.acl"
    acl.write_text(documented_acl())
    passwd = tmp_path / "passwd"
    users = {"ektp-central": "centre-secret", KIOSK: "kiosk-secret", OTHER: "other-secret"}
    for i, (user, password) in enumerate(users.items()):
        flags = ["-c"] if i == 0 else []
        subprocess.run(
            ["mosquitto_passwd", *flags, "-b", str(passwd), user, password], check=True, timeout=30
        )
    broker = Broker(tmp_path / "broker", extra_config=f"password_file {passwd}\nacl_file {acl}\n")
    broker.conf.write_text(broker.conf.read_text().replace("allow_anonymous true", "allow_anonymous false"))
    broker.start()
    k = Kit(tmp_path / "kit", broker.port)
    for name, conf in (("ektp-central", k.central_conf), (KIOSK, k.agent_conf)):
        secret = tmp_path / f"{name}.pw"
        secret.write_text(users[name] + "\n")
        secret.chmod(0o600)
        edit(conf, "[mqtt]\n", f'[mqtt]\nusername = "{name}"\npassword_file = "{secret}"\n')
    try:
        k.setup_keys()
        with running(k, broker):
            sim(k, "fault", "iris", "unplug")
            code, doc, _ = cmd(k, "diag", "iris")
            assert (code, doc["status"], doc["result"]["devices"][0]["state"]) == (1, "failed", "fault"), doc
            verdicts = {}
            kiosk = Raw(broker.port, "probe-kiosk", username=KIOSK, password=users[KIOSK])
            centre = Raw(broker.port, "probe-centre", username="ektp-central", password=users["ektp-central"])
            try:
                kiosk.client.subscribe([(f"ektp/v1/{OTHER}/cmd", 1), (f"ektp/v1/{KIOSK}/cmd", 1)])
                wait_for(kiosk.subscribed.is_set, 10, "the probe's subscriptions")
                for topic in (f"ektp/v1/{KIOSK}/cmd", f"ektp/v1/{OTHER}/result", f"ektp/v1/{KIOSK}/result"):
                    verdicts[f"kiosk writes {topic}"] = kiosk.publish(topic, b"x")
                centre.publish(f"ektp/v1/{OTHER}/cmd", b"x")
                centre.publish(f"ektp/v1/{KIOSK}/cmd", b"x")  # the kiosk's own: it comes after the other's
                wait_for(lambda: f"ektp/v1/{KIOSK}/cmd" in kiosk.got, 10, "the kiosk's own command topic")
                verdicts[f"kiosk reads ektp/v1/{OTHER}/cmd"] = (
                    "received" if f"ektp/v1/{OTHER}/cmd" in kiosk.got else "nothing"
                )
            finally:
                kiosk.close()
                centre.close()
            assert verdicts == {
                f"kiosk writes ektp/v1/{KIOSK}/cmd": "Not authorized",
                f"kiosk writes ektp/v1/{OTHER}/result": "Not authorized",
                f"kiosk writes ektp/v1/{KIOSK}/result": "Success",
                f"kiosk reads ektp/v1/{OTHER}/cmd": "nothing",
            }, verdicts
    finally:
        k.close()
        broker.stop()


# ----------------------------------------------------------------------------- the docs


def test_the_operations_walkthrough_runs_as_written(kit_running: tuple[Kit, Broker], tmp_path: Path) -> None:
    """docs/operations.md section 13's runnable blocks, played as test_docs plays a document,
    against a running kiosk and centre (their configs through $EKTP_CONFIG and $EKTP_CENTRAL_CONFIG)."""
    k, broker = kit_running
    text = (REPO / "docs" / "operations.md").read_text()
    section = text[text.index("## 13. Diagnose a kiosk from the centre") :]
    doc = tmp_path / "walkthrough.md"
    doc.write_text(section)
    work = tmp_path / "work"
    work.mkdir()
    session = Session(
        doc,
        work,
        port=broker.port,
        env={"EKTP_CONFIG": str(k.agent_conf), "EKTP_CENTRAL_CONFIG": str(k.central_conf)},
    )
    result = session.run()
    assert not result.failure(), result.failure()
    assert sum(b.marker == "run" for b in session.played) >= 2
    assert "kiosk 320715-01: diag ok" in result.output
    verbs = [e["verb"] for e in reversed(cmd_log(k))]
    assert verbs == ["diag", "logs", "sync", "resubmit"], verbs


# ----------------------------------------------------------------------------- one click in a browser


def test_the_diag_button_on_the_kiosk_page_shows_the_fault_and_its_hint(kit: tuple[Kit, Broker]) -> None:
    from tests.webkit import browser_missing, chromium, screenshot

    if browser_missing():
        pytest.skip(str(browser_missing()))
    from central.web.auth import set_password

    k, broker = kit
    users = k.root / "central" / "web-users"
    set_password(users, "alice", "correct horse battery")
    port = free_port()
    with k.central_conf.open("a") as f:
        f.write(f'[web]\nlisten = "127.0.0.1:{port}"\nusers_file = "{users}"\nrefresh_s = 30\n')
    with running(k, broker):
        sim(k, "fault", "fingerprint", "unplug")
        browser = chromium()
        try:
            import base64

            token = base64.b64encode(b"alice:correct horse battery").decode()
            browser.execute_cdp_cmd("Network.enable", {})
            browser.execute_cdp_cmd(
                "Network.setExtraHTTPHeaders", {"headers": {"Authorization": f"Basic {token}"}}
            )
            browser.get(f"http://127.0.0.1:{port}/kiosk/{KIOSK}")
            form = browser.find_element("css selector", 'form.command[data-verb="diag"]')
            form.find_element("css selector", 'input[value="fingerprint"]').click()
            form.find_element("css selector", 'button[type="submit"]').click()
            wait_for(lambda: "/commands?cmd=" in browser.current_url, 20, "the command's page")
            hint = 'table#result-devices tr[data-device="fingerprint"][data-state="fault"] td.hint'
            wait_for(
                lambda: bool(browser.find_elements("css selector", hint)),
                30,
                "the result, by the page's reload",
            )
            shown = browser.find_element("css selector", hint).text
            screenshot(browser, "kiosk-command")
        finally:
            browser.quit()
        local = json.loads(k.agent_cli("diag", "fingerprint", "--json").stdout)["devices"][0]
    assert shown == local["hint"] and shown
    (entry,) = cmd_log(k)
    assert (entry["verb"], entry["status"], entry["issuer"], entry["via"]) == (
        "diag",
        "failed",
        "alice",
        "web",
    )
