"""Docs that run as written: the shell blocks of README.md and docs/*.md run here, so
they cannot drift from the code.

The marker convention. Every ```sh (or bash, shell, console) block carries, on the line
right before its opening fence, an HTML comment that a reader does not see rendered:

    <!-- test: run -->            run it (below)
    <!-- test: skip (why) -->     not run, and why: root on a kiosk, systemd as PID 1,
                                  real hardware, a Pi. Keep these few and honest
    <!-- test: mosquitto -->      (any fence) a Mosquitto config: loaded by a real
                                  `mosquitto -c`, which must listen
    <!-- test: file NAME -->      (any fence) written to NAME in the session's folder,
                                  e.g. the ACL file a Mosquitto config names
    <!-- test: agent-config -->   (any fence) a whole agent config.toml: must parse

A shell block without a marker fails test_every_shell_block_is_marked, and so does an
untagged block whose first line is a command: a new block cannot slip by untested.

How a document runs. Its marked blocks play in order in ONE `bash -euo pipefail`
session, as at one terminal: a block sees the files, the current directory, the
variables and the background jobs (`cmd &` ... `kill %1`) of the blocks before it. The
session starts in a fresh scratch folder that is also $HOME, with the venv's bin first
on PATH, and every process it leaves is stopped at the end. Each block has 90 s. Three
rewrites, and only these, happen on the way:

- the broker: the docs say 1883, the port a reader's own Mosquitto listens on; the test
  starts a Mosquitto of its own on a free loopback port and puts that number in place
  of every 1883 in a runnable block (literal configs read better than `$PORT`);
- `NAME=value` lines the test sets for a document (only ROOT, in the acceptance
  checklist of operations.md: a scratch root instead of /);
- a command whose comment says `(exit N)` must exit N (under -e it could not run
  otherwise): `ektp-agent diag   # FAIL fingerprint ... (exit 1)`.

A Mosquitto snippet is loaded with each `listener` moved to a free loopback port and
each absolute path replaced by the file of that name in the session's folder (where the
runnable block before it made the certificates), then stopped.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from agent.config import parse_config
from tests.agentkit import BIN, Kit
from tests.dockit import DOCS, REPO, Session, blocks, problems
from tests.netkit import Broker
from tests.test_systemd import _local_copy as local_unit

RUNNABLE = ("run", "mosquitto", "file")
DOCS_TO_RUN = [d for d in DOCS if any(b.marker in RUNNABLE for b in blocks(d))]


@pytest.mark.parametrize("doc", DOCS, ids=lambda d: d.name)
def test_every_shell_block_is_marked(doc: Path) -> None:
    found = problems(doc)
    assert not found, "\n".join(found)


def test_agent_config_examples_parse() -> None:
    examples = [b for doc in DOCS for b in blocks(doc) if b.marker == "agent-config"]
    assert examples, "operations.md section 5 shows a whole config.toml marked <!-- test: agent-config -->"
    for b in examples:
        parse_config(b.text)  # ConfigError names the key


# ----------------------------------------------------------------------------- per document


@dataclass
class DocRun:
    """What a document's session gets beyond the defaults, and what must hold after it."""

    env: dict[str, str] = field(default_factory=dict)
    overrides: dict[str, str] = field(default_factory=dict)
    after: Callable[[Path], None] = lambda workdir: None


@contextmanager
def plain(workdir: Path, broker: Broker) -> Iterator[DocRun]:
    yield DocRun()


def _cli(tool: str, config: Path, *args: str) -> Any:
    p = subprocess.run(
        [tool, "--config", str(config), *args, "--json"], capture_output=True, text=True, timeout=60
    )
    assert p.returncode == 0, p.stdout + p.stderr
    return json.loads(p.stdout)


@contextmanager
def readme(workdir: Path, broker: Broker) -> Iterator[DocRun]:
    def after(workdir: Path) -> None:
        """The quick start's promise: its two residents are stored at the centre, as synthetic."""
        rows = _cli(str(BIN / "ektp-central"), workdir / "kit" / "central.toml", "packets")
        assert [(r["kiosk"], r["seq"], r["synthetic"]) for r in rows] == [
            ("320715-01", 1, True),
            ("320715-01", 2, True),
        ], rows

    yield DocRun(after=after)


@contextmanager
def operations(workdir: Path, broker: Broker) -> Iterator[DocRun]:
    """The end of an install as far as a machine without systemd as PID 1 allows: the files
    of sections 3 and 7 in a scratch root (the unit through test_systemd's local copy, so
    ExecStart is this venv's), and the kiosk and its centre started as systemd would,
    their configs found through $EKTP_CONFIG and $EKTP_CENTRAL_CONFIG."""
    if os.geteuid() != 0:
        pytest.skip("systemd-tmpfiles --create --root gives the directories their owners: needs root")
    for tool in ("systemd-sysusers", "systemd-tmpfiles", "systemd-analyze"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed")
    root = workdir / "kiosk-root"
    install = (REPO / "docs" / "operations.md").read_text()
    for src, dest in (
        ("ektp-agent.sysusers", "usr/lib/sysusers.d/ektp-agent.conf"),
        ("ektp-agent.tmpfiles", "usr/lib/tmpfiles.d/ektp-agent.conf"),
    ):
        assert f"systemd/{src} /{dest}" in install, "section 3 installs it there"
        (root / dest).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(REPO / "systemd" / src, root / dest)
    assert "systemd/ektp-agent.service /etc/systemd/system/" in install, "section 7 installs it there"
    units = root / "etc" / "systemd" / "system"
    units.mkdir(parents=True)
    local_unit("ektp-agent.service", units)
    kit = Kit(workdir / "kit", broker.port)
    try:
        kit.setup_keys()
        kit.start_central()
        kit.start_agent()

        def after(workdir: Path) -> None:
            passwd = {
                line.split(":")[0]: line.split(":") for line in (root / "etc/passwd").read_text().splitlines()
            }
            groups = {
                line.split(":")[0]: line.split(":")[3].split(",")
                for line in (root / "etc/group").read_text().splitlines()
            }
            uid, gid = int(passwd["ektp"][2]), int(passwd["ektp"][3])
            assert all("ektp" in groups[g] for g in ("dialout", "plugdev", "video")), groups
            for path, mode, owner in (
                ("etc/ektp-agent", 0o750, (0, gid)),
                ("var/lib/ektp-agent", 0o700, (uid, gid)),
            ):
                st = (root / path).stat()
                assert (st.st_mode & 0o7777, (st.st_uid, st.st_gid)) == (mode, owner), path
            # the key the kiosk shows is the one the centre has, and the kiosk is online there
            shown = _cli(str(BIN / "ektp-agent"), kit.agent_conf, "keys", "show")["fingerprint"]
            (known,) = _cli(str(BIN / "ektp-central"), kit.central_conf, "kiosks")
            assert (known["kiosk"], known["fingerprint"]) == ("320715-01", shown)
            deadline = time.monotonic() + 30
            while True:
                (row,) = _cli(str(BIN / "ektp-central"), kit.central_conf, "fleet")
                if row["online"] or time.monotonic() > deadline:
                    break
                time.sleep(0.5)
            assert (row["kiosk"], row["registered"], row["online"], row["faulty"]) == (
                "320715-01",
                True,
                True,
                [],
            ), row

        yield DocRun(
            env={"EKTP_CONFIG": str(kit.agent_conf), "EKTP_CENTRAL_CONFIG": str(kit.central_conf)},
            overrides={"ROOT": str(root)},
            after=after,
        )
    finally:
        kit.close()


SETUPS: dict[str, Callable[[Path, Broker], AbstractContextManager[DocRun]]] = {
    "README.md": readme,
    "operations.md": operations,
}


@pytest.mark.timeout(300)
@pytest.mark.parametrize("doc", DOCS_TO_RUN, ids=lambda d: d.name)
def test_doc_runs_as_written(doc: Path, tmp_path: Path) -> None:
    workdir = tmp_path / "scratch"
    workdir.mkdir()
    broker = Broker(tmp_path / "broker")
    broker.start()
    try:
        with SETUPS.get(doc.name, plain)(workdir, broker) as run:
            session = Session(doc, workdir, port=broker.port, overrides=run.overrides, env=run.env)
            result = session.run()
            if result.failure():
                pytest.fail(result.failure(), pytrace=False)
            run.after(workdir)
    finally:
        broker.stop()


# ----------------------------------------------------------------------------- the runner itself


def _doc(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "doc.md"
    path.write_text(text)
    return path


def test_an_unmarked_shell_block_and_a_stray_marker_are_problems(tmp_path: Path) -> None:
    doc = _doc(
        tmp_path,
        "```sh\nls\n```\n\n<!-- test: skip -->\n```sh\nls\n```\n\n<!-- test: run -->\n\n```sh\nls\n```\n\n"
        "```\nektp-agent status\n```\n",
    )
    found = "\n".join(problems(doc))
    assert "doc.md:1: ```sh block without a marker" in found
    assert "doc.md:6: 'skip' needs its reason" in found
    assert "doc.md:10: a test marker must be the line right before a fence" in found
    assert "doc.md:12: ```sh block without a marker" in found  # the stray marker left it bare
    assert "doc.md:16: an untagged block that starts with a command" in found


def test_a_failing_block_is_named_and_later_blocks_do_not_run(tmp_path: Path) -> None:
    doc = _doc(
        tmp_path,
        "<!-- test: run -->\n```sh\ntouch first\n```\n\n<!-- test: skip (not here) -->\n```sh\nexit 1\n```\n\n"
        "<!-- test: run -->\n```sh\nektp-agent --no-such-option\n```\n\n<!-- test: run -->\n```sh\ntouch third\n```\n",
    )
    work = tmp_path / "work"
    work.mkdir()
    result = Session(doc, work).run()
    assert result.returncode == 2 and result.last_block is not None and result.last_block.line == 12
    assert "doc.md:12: the block failed (exit 2)" in result.failure()
    assert (work / "first").exists() and not (work / "third").exists()


def test_exit_comments_are_checked_and_the_port_and_variables_are_the_tests(tmp_path: Path) -> None:
    doc = _doc(
        tmp_path,
        "<!-- test: run -->\n```sh\nROOT=/    # the kiosk\necho $ROOT > root\necho 1883 > port\n"
        "false        # (exit 1)\nfalse        # says (exit 1) but exits 1: fine\n```\n\n"
        "<!-- test: run -->\n```sh\ntrue         # FAIL ... (exit 1)\n```\n",
    )
    work = tmp_path / "work"
    work.mkdir()
    result = Session(doc, work, port=4242, overrides={"ROOT": "/scratch"}).run()
    assert (work / "root").read_text() == "/scratch\n" and (work / "port").read_text() == "4242\n"
    assert result.returncode == 1 and result.last_block is not None and result.last_block.line == 11
    assert "expected exit 1 from: true (got 0)" in result.output


def test_a_block_that_hangs_is_stopped_with_what_it_left_running(tmp_path: Path) -> None:
    doc = _doc(tmp_path, "<!-- test: run -->\n```sh\nsleep 300 &\necho started\nsleep 300\n```\n")
    work = tmp_path / "work"
    work.mkdir()
    result = Session(doc, work, block_timeout_s=1.0).run()
    assert result.timed_out is not None and "doc.md:2: still running after 1 s" in result.failure()
    assert "started" in result.output  # the no_leftovers fixture checks that both sleeps are gone


def test_a_mosquitto_snippet_loads_and_one_with_an_end_of_line_comment_does_not(tmp_path: Path) -> None:
    """Mosquitto reads `keyfile x.key  # note` as the file name `x.key  # note` (issue 11)."""
    work = tmp_path / "work"
    work.mkdir()
    subprocess.run(
        shlex.split(
            "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 1"
            " -subj /CN=localhost -keyout b.key -out b.crt"
        ),
        cwd=work,
        check=True,
        capture_output=True,
        timeout=60,
    )
    conf = "listener 8883\ncertfile /etc/mosquitto/certs/b.crt\nkeyfile /etc/mosquitto/certs/b.key{}\n"
    good = Session(_doc(tmp_path, f"<!-- test: mosquitto -->\n```\n{conf.format('')}```\n"), work).run()
    assert good.returncode == 0, good.output
    bad = Session(
        _doc(tmp_path, f"<!-- test: mosquitto -->\n```\n{conf.format('  # its key')}```\n"), work
    ).run()
    assert bad.returncode == 1 and "exited with" in bad.output, bad.output
