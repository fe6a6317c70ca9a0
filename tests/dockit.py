"""Docs that run as written: the fenced blocks of README.md and docs/*.md, the marker
before each, and a runner that plays a document's runnable blocks in one shell session,
as a reader at one terminal would. The rules are in tests/test_docs.py.

    blocks(path)                   every fenced block of a Markdown file, with its marker
    problems(path)                 what breaks the marker rules there
    Session(...).run()             the runnable blocks in one `bash -euo pipefail`, each
                                   one timed; then every process it left is stopped
    python -m tests.dockit check-mosquitto CONF PORT [PORT ...]
                                   start `mosquitto -c CONF`, wait until it listens on
                                   each port, stop it (exit 1 with its words if it does not)
"""

from __future__ import annotations

import contextlib
import os
import pwd
import re
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DOCS = (REPO / "README.md", *sorted((REPO / "docs").glob("*.md")))

SHELL_LANGS = frozenset({"sh", "bash", "shell", "console"})
SHELL_MARKERS = frozenset({"run", "skip"})
OTHER_MARKERS = frozenset({"mosquitto", "file", "agent-config"})
# The first line of an untagged block that starts like this is a command: tag it ```sh.
COMMAND_STARTS = (
    "$ ",
    "ektp-agent ",
    "ektp-central ",
    "ektp-sim ",
    "sudo ",
    ".venv/bin/",
    "make ",
    "pip ",
    "systemctl ",
    "apt-get ",
    "openssl ",
    "mosquitto ",
    "mosquitto_",
)
TEST_PORT = "1883"  # the broker port in the docs; the runner puts its own broker's port there

MARKER_RE = re.compile(r"^<!--\s*test:\s*(?P<kind>[A-Za-z-]+)\s*(?P<arg>.*?)\s*-->$")
FENCE_RE = re.compile(r"^(?P<indent>\s*)(?P<fence>`{3,}|~{3,})\s*(?P<info>[^`\s]*)[^`]*$")
HEREDOC_RE = re.compile(r"<<-?\s*(['\"]?)(?P<word>[A-Za-z_][A-Za-z0-9_]*)\1")
EXPECT_EXIT_RE = re.compile(r"\(exit (?P<code>\d+)\)")
BLOCK_TIMEOUT_S = 90.0


@dataclass(frozen=True, slots=True)
class Block:
    doc: Path
    line: int  # of the opening fence, 1-based
    lang: str
    text: str
    marker: str | None  # run, skip, mosquitto, file, agent-config, or another word (a problem)
    arg: str  # the skip reason, the file name

    @property
    def where(self) -> str:
        return f"{_shown(self.doc)}:{self.line}"

    @property
    def is_shell(self) -> bool:
        return self.lang in SHELL_LANGS


def _shown(path: Path) -> str:
    return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path)


def blocks(path: Path) -> list[Block]:
    """Every fenced block of ``path`` with the marker on the line right before it (if any)."""
    lines = path.read_text().splitlines()
    found: list[Block] = []
    i = 0
    while i < len(lines):
        m = FENCE_RE.match(lines[i])
        if not m:
            i += 1
            continue
        indent, fence = len(m["indent"]), m["fence"]
        body: list[str] = []
        j = i + 1
        while j < len(lines) and not re.match(rf"^\s*{re.escape(fence[0])}{{{len(fence)},}}\s*$", lines[j]):
            body.append(lines[j][indent:] if lines[j][:indent].isspace() else lines[j].lstrip())
            j += 1
        marker, arg = None, ""
        if i > 0 and (mm := MARKER_RE.match(lines[i - 1].strip())):
            marker, arg = mm["kind"], mm["arg"]
        found.append(Block(path, i + 1, m["info"].lower(), "\n".join(body) + "\n", marker, arg))
        i = j + 1
    return found


def problems(path: Path) -> list[str]:
    """Breaches of the marker rules in ``path``, one line each, naming file and line."""
    out: list[str] = []
    found = blocks(path)
    fence_lines = {b.line for b in found}
    for n, line in enumerate(path.read_text().splitlines(), start=1):
        if MARKER_RE.match(line.strip()) and n + 1 not in fence_lines:
            out.append(f"{_shown(path)}:{n}: a test marker must be the line right before a fence")
    for b in found:
        if b.is_shell:
            if b.marker is None:
                out.append(
                    f"{b.where}: ```{b.lang} block without a marker: put <!-- test: run --> or "
                    "<!-- test: skip (why) --> on the line before it"
                )
            elif b.marker not in SHELL_MARKERS:
                out.append(f"{b.where}: a shell block takes 'run' or 'skip (why)', not {b.marker!r}")
            elif b.marker == "skip" and not re.fullmatch(r"\(.*\S.*\)", b.arg):
                out.append(f"{b.where}: 'skip' needs its reason in parentheses: <!-- test: skip (why) -->")
        elif b.marker is not None and b.marker not in OTHER_MARKERS:
            out.append(
                f"{b.where}: marker {b.marker!r} on a ```{b.lang} block; expected one of {sorted(OTHER_MARKERS)}"
            )
        elif b.marker == "file" and not re.fullmatch(r"[A-Za-z0-9_.-]+", b.arg):
            out.append(f"{b.where}: 'file' needs a plain file name: <!-- test: file NAME -->")
        elif b.lang == "" and b.marker is None:
            first = next((s.strip() for s in b.text.splitlines() if s.strip()), "")
            if first.startswith(COMMAND_STARTS):
                out.append(
                    f"{b.where}: an untagged block that starts with a command ({first[:40]!r}): "
                    "make it ```sh with a marker (or ```text if it is not for running)"
                )
    return out


# ----------------------------------------------------------------------------- the shell text


def _comment_start(line: str) -> int | None:
    """Index of the ``#`` that starts a shell comment on ``line`` (outside quotes), if any."""
    quote = None
    for k, ch in enumerate(line):
        if quote:
            if ch == quote:
                quote = None
            elif ch == "\\" and quote == '"':
                continue
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (k == 0 or line[k - 1].isspace()):
            return k
    return None


def shell_text(text: str, *, port: int | None, overrides: Mapping[str, str], used: set[str]) -> str:
    """A runnable block as the runner plays it: the broker port, the variables the test sets,
    and each ``(exit N)`` comment turned into a check of that exit code."""
    if port is not None:
        text = re.sub(rf"\b{TEST_PORT}\b", str(port), text)
    out: list[str] = []
    heredoc: str | None = None
    continued = False
    for line in text.splitlines():
        if heredoc is not None:
            out.append(line)
            if line.strip() == heredoc:
                heredoc = None
            continue
        code = line[:c] if (c := _comment_start(line)) is not None else line
        if (hd := HEREDOC_RE.search(code)) is not None:
            heredoc = hd["word"]
        assign = re.match(r"^(?P<name>[A-Za-z_][A-Za-z0-9_]*)=\S*(?P<rest>\s+#.*)?$", line)
        if assign and assign["name"] in overrides and not continued:
            used.add(assign["name"])
            line = f"{assign['name']}={shlex.quote(overrides[assign['name']])}{assign['rest'] or ''}"
        elif (
            c is not None
            and not continued
            and not code.rstrip().endswith("\\")
            and heredoc is None
            and (exp := EXPECT_EXIT_RE.search(line[c:]))
        ):
            cmd, want = code.rstrip(), exp["code"]
            line = (
                f"{{ {cmd}\n}} && __ektp_rc=0 || __ektp_rc=$?; [ $__ektp_rc = {want} ] || "
                f"{{ echo {shlex.quote(f'expected exit {want} from: {cmd.strip()}')} "
                f'"(got $__ektp_rc)" >&2; exit 1; }}'
            )
        continued = code.rstrip().endswith("\\")
        out.append(line)
    return "\n".join(out) + "\n"


def mosquitto_config(text: str, workdir: Path) -> tuple[str, list[int]]:
    """A Mosquitto snippet made local: each listener on a free loopback port, each absolute path
    replaced by the file of that name in ``workdir``, and (as root) the test's user kept."""
    from tests.netkit import free_port

    ports: list[int] = []
    lines = []
    for line in text.splitlines():
        if re.match(r"^\s*listener\s+\d+", line):
            ports.append(free_port())
            line = f"listener {ports[-1]} 127.0.0.1"
        elif not line.lstrip().startswith("#"):
            line = re.sub(r"(?<=\s)/\S+", lambda m: str(workdir / Path(m[0]).name), line)
        lines.append(line)
    head = [f"user {pwd.getpwuid(os.getuid()).pw_name}"] if os.getuid() == 0 else []
    return "\n".join([*head, *lines]) + "\n", ports


def _listening_ports(pid: int) -> set[int]:
    """The TCP ports process ``pid`` listens on (from /proc: its socket inodes in the LISTEN state)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").glob("*"):
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:  # 0A: LISTEN
                ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


SETTLE_S = 1.0  # how long a broker that listens must stay up to count as loaded


def check_mosquitto(conf: Path, ports: list[int], timeout: float = 15.0) -> str:
    """Start ``mosquitto -c conf``; '' once it listens on every port, else what went wrong."""
    from tests.netkit import mosquitto_binary

    log = conf.with_suffix(".log")
    with open(log, "wb") as out:
        proc = subprocess.Popen([mosquitto_binary(), "-c", str(conf)], stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + timeout
        waiting = list(ports)
        while waiting:
            if proc.poll() is not None:
                return (
                    f"mosquitto -c {conf} exited with {proc.returncode}:\n{log.read_text(errors='replace')}"
                )
            if time.monotonic() > deadline:
                return f"mosquitto -c {conf} does not listen on {waiting} after {timeout:.0f} s"
            if waiting[0] in _listening_ports(
                proc.pid
            ):  # its own socket: another broker's port proves nothing
                waiting.pop(0)
                continue
            time.sleep(0.05)
        # Mosquitto binds a listener before it loads that listener's TLS files: one whose key file
        # cannot be read listens for a moment, then exits. Loaded means still there a while later.
        time.sleep(SETTLE_S)
        if proc.poll() is not None:
            return f"mosquitto -c {conf} exited with {proc.returncode}:\n{log.read_text(errors='replace')}"
        return ""
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


# ----------------------------------------------------------------------------- the session


@dataclass
class Session:
    """One document's marked blocks, played in order by one ``bash -euo pipefail`` in ``workdir``."""

    doc: Path
    workdir: Path
    port: int | None = None  # the test's broker, put in place of 1883
    overrides: Mapping[str, str] = field(default_factory=dict)  # NAME=value lines the test sets
    env: Mapping[str, str] = field(default_factory=dict)
    block_timeout_s: float = BLOCK_TIMEOUT_S
    played: list[Block] = field(default_factory=list)

    def script(self) -> str:
        hidden = self.workdir / ".doctest"
        hidden.mkdir(parents=True, exist_ok=True)
        marks = hidden / "marks"
        used: set[str] = set()
        parts = []
        for b in blocks(self.doc):
            if b.marker not in ("run", "file", "mosquitto"):
                continue
            n = len(self.played)
            self.played.append(b)
            parts.append(f"echo {n} >> {shlex.quote(str(marks))}")
            if b.marker == "run":
                parts.append(shell_text(b.text, port=self.port, overrides=self.overrides, used=used))
            elif b.marker == "file":
                parts.append(f"cat > {shlex.quote(b.arg)} <<'__EKTP_DOC_FILE__'\n{b.text}__EKTP_DOC_FILE__")
            else:
                conf, ports = mosquitto_config(b.text, self.workdir)
                path = hidden / f"mosquitto-{n}.conf"
                path.write_text(conf)
                parts.append(
                    f"PYTHONPATH={shlex.quote(str(REPO))} {shlex.quote(sys.executable)} -m tests.dockit "
                    f"check-mosquitto {shlex.quote(str(path))} {' '.join(map(str, ports))}"
                )
        unused = set(self.overrides) - used
        if unused:
            raise AssertionError(f"{self.doc.name}: no runnable block sets {sorted(unused)} (NAME=... line)")
        return "\n".join(parts) + "\n"

    def run(self) -> SessionResult:
        script = self.script()
        hidden = self.workdir / ".doctest"
        (hidden / "session.sh").write_text(script)
        marks, log = hidden / "marks", hidden / "session.log"
        marks.write_text("")
        env = {k: v for k, v in os.environ.items() if not k.startswith(("EKTP_", "PYTEST_"))}
        env.update(
            HOME=str(self.workdir),
            PATH=f"{Path(sys.executable).parent}:{env.get('PATH', '/usr/bin:/bin')}:/usr/sbin:/sbin",
        )
        env.update(self.env)
        started = time.monotonic()
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                ["bash", "-euo", "pipefail", str(hidden / "session.sh")],
                cwd=self.workdir,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        timed_out: Block | None = None
        current, since = -1, time.monotonic()
        try:
            while proc.poll() is None:
                seen = marks.read_text().split()
                if seen and int(seen[-1]) != current:
                    current, since = int(seen[-1]), time.monotonic()
                if current >= 0 and time.monotonic() - since > self.block_timeout_s:
                    timed_out = self.played[current]
                    break
                time.sleep(0.1)
        finally:
            stop_group(proc.pid)
            proc.wait(10)
        seen = marks.read_text().split()
        last = self.played[int(seen[-1])] if seen else None
        return SessionResult(
            proc.returncode,
            log.read_text(errors="replace"),
            last,
            timed_out,
            time.monotonic() - started,
            self.block_timeout_s,
        )


@dataclass(frozen=True, slots=True)
class SessionResult:
    returncode: int
    output: str
    last_block: Block | None  # the block running when the session ended
    timed_out: Block | None
    seconds: float
    block_timeout_s: float = BLOCK_TIMEOUT_S

    def failure(self) -> str:
        """'' when every block ran; else which block failed, and the session's last output."""
        if self.timed_out is not None:
            what = f"{self.timed_out.where}: still running after {self.block_timeout_s:.0f} s"
        elif self.returncode != 0:
            where = self.last_block.where if self.last_block else "before the first block"
            what = f"{where}: the block failed (exit {self.returncode})"
        else:
            return ""
        return f"{what}\n--- the session's output (last 6000 characters) ---\n{self.output[-6000:]}"


def _group_members(pgid: int) -> list[int]:
    """Live (not zombie) processes in process group ``pgid``."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        if fields[0] != "Z" and int(fields[2]) == pgid:
            members.append(int(entry.name))
    return members


def stop_group(pgid: int, grace_s: float = 15.0) -> None:
    """SIGTERM every process of the session (the background jobs a block left), then SIGKILL."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, sig)
        deadline = time.monotonic() + grace_s
        while _group_members(pgid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if not _group_members(pgid):
            return


def main(argv: list[str]) -> int:
    if len(argv) >= 3 and argv[0] == "check-mosquitto":
        error = check_mosquitto(Path(argv[1]), [int(p) for p in argv[2:]])
        if error:
            print(error, file=sys.stderr)
            return 1
        print(f"mosquitto loaded {argv[1]} and listened on {', '.join(argv[2:])}")
        return 0
    print("usage: python -m tests.dockit check-mosquitto CONF PORT [PORT ...]", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
