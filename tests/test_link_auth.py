"""The production options of the link, against a real Mosquitto: TLS with client
certificates whose CN is the MQTT username (with the per-kiosk ACL of docs/operations.md),
and a username with a password file."""

from __future__ import annotations

import datetime as dt
import ipaddress
import subprocess
import threading
from pathlib import Path

import paho.mqtt.client as mqtt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from paho.mqtt.enums import CallbackAPIVersion

from tests.linkkit import Centre, Keys, Kiosk, assert_exactly_once, wait_for
from tests.netkit import Broker

KIOSK = "320715-01"
OTHER = "320715-02"


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _write_key(key: ec.EllipticCurvePrivateKey, path: Path) -> None:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    path.chmod(0o600)


class Pki:
    """A throwaway CA, a broker certificate for 127.0.0.1, and client certificates."""

    def __init__(self, root: Path) -> None:
        root.mkdir(parents=True, exist_ok=True)
        self.root = root
        self.ca_key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.UTC)
        self.ca = (
            x509.CertificateBuilder()
            .subject_name(_name("ektp test CA"))
            .issuer_name(_name("ektp test CA"))
            .public_key(self.ca_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(self.ca_key, hashes.SHA256())
        )
        self.ca_file = root / "ca.crt"
        self.ca_file.write_bytes(self.ca.public_bytes(serialization.Encoding.PEM))
        self.server_cert, self.server_key = self.issue("broker", server=True)

    def issue(self, cn: str, *, server: bool = False) -> tuple[Path, Path]:
        key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.UTC)
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(cn))
            .issuer_name(self.ca.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
        )
        if server:
            builder = builder.add_extension(
                x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                critical=False,
            )
        cert = builder.sign(self.ca_key, hashes.SHA256())
        cert_path, key_path = self.root / f"{cn}.crt", self.root / f"{cn}.key"
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        _write_key(key, key_path)
        return cert_path, key_path


def test_tls_client_certificates_with_the_per_kiosk_acl(tmp_path: Path) -> None:
    pki = Pki(tmp_path / "pki")
    acl = tmp_path / "ektp.acl"
    acl.write_text(
        "user ektp-central\ntopic read ektp/v1/+/enrollment\ntopic read ektp/v1/+/status\n"
        "topic read ektp/v1/+/health\ntopic write ektp/v1/+/ack\n\n"
        "pattern write ektp/v1/%u/status\npattern write ektp/v1/%u/health\n"
        "pattern write ektp/v1/%u/enrollment\npattern read ektp/v1/%u/ack\n"
    )
    broker = Broker(
        tmp_path / "broker",
        extra_config=(
            f"cafile {pki.ca_file}\ncertfile {pki.server_cert}\nkeyfile {pki.server_key}\n"
            f"require_certificate true\nuse_identity_as_username true\nacl_file {acl}\n"
        ),
    )
    broker.start()
    keys = Keys(tmp_path, KIOSK)
    centre_cert, centre_key = pki.issue("ektp-central")
    kiosk_cert, kiosk_key = pki.issue(KIOSK)
    centre = Centre(
        tmp_path / "c",
        broker.port,
        keys,
        mqtt={"tls": True, "ca_file": pki.ca_file, "cert_file": centre_cert, "key_file": centre_key},
    )
    kiosk = Kiosk(
        tmp_path / "k",
        broker.port,
        keys,
        extra_mqtt=f'tls = true\nca_file = "{pki.ca_file}"\ncert_file = "{kiosk_cert}"\nkey_file = "{kiosk_key}"\n',
    )
    try:
        kiosk.commit(5)
        wait_for(lambda: kiosk.stats().delivered == 5, 30, "delivery over TLS")
        assert_exactly_once(centre, kiosk)
        # the ACL let the status through (the centre records statuses in batches of their own,
        # which may come after the packets: ~92 KB packets deliver in well under a second)
        wait_for(
            lambda: (centre.status(KIOSK) or {}).get("state") == "online", 10, "the kiosk's status online"
        )
        assert kiosk.link.stats.refused_pubacks == 0
        # the kiosk's certificate may not write another kiosk's topics or its own ack topic
        # (forging acks), nor read another kiosk's acks; its own topics it may
        verdicts = forbidden_and_allowed(broker.port, pki, (kiosk_cert, kiosk_key), (centre_cert, centre_key))
        assert verdicts == {
            f"write ektp/v1/{OTHER}/enrollment": "Not authorized",
            f"write ektp/v1/{OTHER}/status": "Not authorized",
            f"write ektp/v1/{KIOSK}/ack": "Not authorized",
            f"write ektp/v1/{KIOSK}/health": "Success",
            f"read ektp/v1/{OTHER}/ack": "nothing",
            f"read ektp/v1/{KIOSK}/ack": "received",
        }, verdicts
    finally:
        kiosk.stop()
        centre.stop()
        broker.stop()


def forbidden_and_allowed(
    port: int, pki: Pki, kiosk_files: tuple[Path, Path], centre_files: tuple[Path, Path]
) -> dict[str, str]:
    """What the broker does with a client holding the kiosk's certificate: the PUBACK reason of
    each publish, and whether an ack published with the centre's certificate reaches it."""
    (cert, key), (centre_cert, centre_key) = kiosk_files, centre_files
    verdicts: dict[str, str] = {}
    got: list[str] = []
    pubacks: dict[int, str] = {}
    kiosk = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"{KIOSK}-probe", protocol=mqtt.MQTTv5)
    kiosk.tls_set(ca_certs=str(pki.ca_file), certfile=str(cert), keyfile=str(key))
    kiosk.on_publish = lambda c, u, mid, rc, p: pubacks.__setitem__(mid, str(rc))
    kiosk.on_message = lambda c, u, m: got.append(m.topic)
    subscribed = threading.Event()
    kiosk.on_subscribe = lambda c, u, mid, rcs, p: subscribed.set()
    kiosk.connect("127.0.0.1", port)
    kiosk.loop_start()
    centre = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="ektp-central-probe", protocol=mqtt.MQTTv5)
    centre.tls_set(ca_certs=str(pki.ca_file), certfile=str(centre_cert), keyfile=str(centre_key))
    centre.connect("127.0.0.1", port)
    centre.loop_start()
    try:
        kiosk.subscribe([(f"ektp/v1/{OTHER}/ack", 1), (f"ektp/v1/{KIOSK}/ack", 1)])
        wait_for(subscribed.is_set, 10, "the probe's subscriptions")
        for topic in (
            f"ektp/v1/{OTHER}/enrollment",
            f"ektp/v1/{OTHER}/status",
            f"ektp/v1/{KIOSK}/ack",
            f"ektp/v1/{KIOSK}/health",
        ):
            info = kiosk.publish(topic, b"{}", qos=1)
            wait_for(lambda m=info.mid: m in pubacks, 10, f"the PUBACK of {topic}")  # type: ignore[misc]
            verdicts[f"write {topic}"] = pubacks[info.mid]
        # the centre writes the other kiosk's ack first, then this kiosk's: when the second has
        # come, the first would have come before it
        for topic in (f"ektp/v1/{OTHER}/ack", f"ektp/v1/{KIOSK}/ack"):
            centre.publish(topic, b"ack", qos=1).wait_for_publish(5)
        wait_for(lambda: f"ektp/v1/{KIOSK}/ack" in got, 10, "the kiosk's own ack")
        for topic in (f"ektp/v1/{OTHER}/ack", f"ektp/v1/{KIOSK}/ack"):
            verdicts[f"read {topic}"] = "received" if topic in got else "nothing"
    finally:
        for c in (kiosk, centre):
            c.disconnect()
            c.loop_stop()
    return verdicts


def test_a_kiosk_without_a_client_certificate_is_refused_and_keeps_everything(tmp_path: Path) -> None:
    pki = Pki(tmp_path / "pki")
    broker = Broker(
        tmp_path / "broker",
        extra_config=(
            f"cafile {pki.ca_file}\ncertfile {pki.server_cert}\nkeyfile {pki.server_key}\n"
            "require_certificate true\nuse_identity_as_username true\n"
        ),
    )
    broker.start()
    keys = Keys(tmp_path, KIOSK)
    kiosk = Kiosk(tmp_path / "k", broker.port, keys, extra_mqtt=f'tls = true\nca_file = "{pki.ca_file}"\n')
    try:
        kiosk.commit(2)
        wait_for(lambda: bool(kiosk.link.stats.last_error), 10, "the refusal to show in health")
        assert not kiosk.link.stats.connected
        assert kiosk.stats().pending == 2
    finally:
        kiosk.stop()
        broker.stop()


def test_username_and_password_file(tmp_path: Path) -> None:
    passwd = tmp_path / "passwd"
    subprocess.run(
        ["mosquitto_passwd", "-c", "-b", str(passwd), KIOSK, "s3cret-kiosk"], check=True, timeout=30
    )
    broker = Broker(tmp_path / "broker", extra_config=f"password_file {passwd}\n")
    broker.conf.write_text(broker.conf.read_text().replace("allow_anonymous true", "allow_anonymous false"))
    broker.start()
    keys = Keys(tmp_path, KIOSK)
    good, bad = tmp_path / "good.pw", tmp_path / "bad.pw"
    good.write_text("s3cret-kiosk\n")
    bad.write_text("wrong\n")
    for f in (good, bad):
        f.chmod(0o600)
    wrong = Kiosk(
        tmp_path / "k1", broker.port, keys, extra_mqtt=f'username = "{KIOSK}"\npassword_file = "{bad}"\n'
    )
    try:
        wait_for(lambda: "refused" in wrong.link.stats.last_error, 10, "a refused connection")
        assert not wrong.link.stats.connected
    finally:
        wrong.stop()
    right = Kiosk(
        tmp_path / "k2", broker.port, keys, extra_mqtt=f'username = "{KIOSK}"\npassword_file = "{good}"\n'
    )
    try:
        wait_for(lambda: right.link.stats.connected, 10, "a connection with the right password")
        assert right.link.stats.last_error == ""
    finally:
        right.stop()
        broker.stop()
