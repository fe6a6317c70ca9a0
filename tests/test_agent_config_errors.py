"""Clear errors instead of tracebacks: a data dir the service cannot write (a read-only
mount, a directory of another user) stops `ektp-agent run` with one line naming the dir and
what to do; a service that takes the connection but does not answer makes status, queue,
diag and sync say so, naming the socket, with exit 1. (A config file that is not UTF-8:
tests/test_config.py.)"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from agent import cli_kiosk
from agent.cli import main
from tests.agentkit import Kit, script
from tests.netkit import free_port

NOBODY = 65534


def _mount_works() -> bool:
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        return False
    p = subprocess.run(
        ["unshare", "-m", "mount", "-t", "tmpfs", "none", "/mnt"], capture_output=True, timeout=30
    )
    return p.returncode == 0


@pytest.fixture
def keyed_kit(tmp_path: Path) -> Iterator[Kit]:
    """A kiosk with its keys and a working data dir, as before its SD card went read-only."""
    kit = Kit(tmp_path / "kit", free_port())
    kit.setup_keys()
    try:
        yield kit
    finally:
        kit.close()


def _assert_clear(p: subprocess.CompletedProcess[str], data_dir: Path, words: str) -> None:
    assert p.returncode == 1, (p.returncode, p.stderr)
    assert f"cannot write in the data dir {data_dir}: {words}" in p.stderr, p.stderr
    assert "kiosk.data_dir" in p.stderr
    assert "Traceback" not in p.stderr


@pytest.mark.parametrize("simulate", [False, True], ids=["real-devices", "simulate"])
def test_run_on_a_read_only_data_dir(keyed_kit: Kit, simulate: bool) -> None:
    if not _mount_works():
        pytest.skip("needs root and mount namespaces (unshare -m) to mount the data dir read-only")
    data = keyed_kit.data_dir
    # A private mount namespace: the read-only bind mount is gone when the agent exits.
    remount = 'mount --bind "$1" "$1" && mount -o remount,bind,ro "$1" && shift && exec "$@"'
    argv = [script("ektp-agent"), "--config", str(keyed_kit.agent_conf), "run"]
    p = subprocess.run(
        ["unshare", "-m", "sh", "-c", remount, "sh", str(data), *argv, *(["--simulate"] if simulate else [])],
        capture_output=True,
        text=True,
        timeout=60,
    )
    _assert_clear(p, data, "it is on a read-only file system")
    assert not (data / "sim").exists() and not (data / "outbox.db").exists()


@pytest.mark.parametrize("simulate", [False, True], ids=["real-devices", "simulate"])
def test_run_as_a_user_who_cannot_write_the_data_dir(simulate: bool) -> None:
    """The service's user meets a data dir that root made: Permission denied, said plainly."""
    as_other: list[str] = []
    if os.geteuid() == 0:
        if shutil.which("setpriv") is None:
            pytest.skip("needs setpriv to run the agent as an unprivileged user")
        as_other = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]
    root = Path(tempfile.mkdtemp(prefix="ektp-perm-"))  # outside the 0700 test tree: others may enter
    try:
        os.chmod(root, 0o755)
        data = root / "data"
        data.mkdir(mode=0o555)
        conf = root / "agent.toml"
        conf.write_text(f'[kiosk]\nid = "320715-01"\ndata_dir = "{data}"\n')
        os.chmod(conf, 0o644)
        p = subprocess.run(
            [
                *as_other,
                script("ektp-agent"),
                "--config",
                str(conf),
                "run",
                *(["--simulate"] if simulate else []),
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        _assert_clear(p, data, "Permission denied")
        assert list(data.iterdir()) == []
    finally:
        os.chmod(root / "data", 0o755)
        shutil.rmtree(root)


# ----------------------------------------------------------------------------- a service that does not answer


@pytest.fixture
def hung_service(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Path, Path]]:
    """(config, socket): something listens on the API socket, takes connections, never answers."""
    sock_path = tmp_path / "api.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(sock_path))
    listener.listen(64)  # connections queue in the kernel; nobody ever accepts or answers
    conf = tmp_path / "agent.toml"
    conf.write_text(f'[kiosk]\ndata_dir = "{tmp_path / "data"}"\n[api]\nsocket = "{sock_path}"\n')
    for name in ("STATUS_TIMEOUT_S", "QUEUE_TIMEOUT_S", "SYNC_TIMEOUT_S", "DIAG_TIMEOUT_S"):
        monkeypatch.setattr(cli_kiosk, name, 0.3)
    umask = os.umask(0o022)
    os.umask(umask)
    try:
        yield conf, sock_path
    finally:
        listener.close()
        os.umask(umask)  # `main` makes the process's umask 077


@pytest.mark.parametrize(
    "command", [["status"], ["status", "--json"], ["queue"], ["diag"], ["sync"], ["sync", "--wait"]]
)
def test_a_service_that_does_not_answer_is_named_not_a_traceback(
    hung_service: tuple[Path, Path], command: list[str]
) -> None:
    conf, sock_path = hung_service
    result = CliRunner().invoke(main, ["--config", str(conf), *command])
    assert result.exit_code == 1, (result.output, result.exception)
    assert isinstance(result.exception, SystemExit), result.exception  # not an uncaught TimeoutError
    assert f"the agent service did not answer on {sock_path} within 0.3 s" in result.stderr
    assert "systemctl restart ektp-agent" in result.stderr
    assert result.stdout == ""
