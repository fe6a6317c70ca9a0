"""The mutation run of docs/reliability.md: each mutation breaks one promise in a scratch copy of
the project, and the tests that guard that promise must fail against it.

    .venv/bin/python bench/mutation.py                     # every mutation (about 20 minutes)
    .venv/bin/python bench/mutation.py fsync-off r7-...    # those named
    .venv/bin/python bench/mutation.py --list
    .venv/bin/python bench/mutation.py --worktree ...      # copy the working tree, not HEAD

How: the committed tree (``git archive HEAD``, or the working tree with ``--worktree``) is
copied to a scratch directory once per mutation, the mutation's edits are made there (each an
exact text that must occur exactly once, so that a mutation that no longer applies stops the
run instead of passing quietly), and each of its tests runs alone, from the scratch copy, with
``PYTHONPATH`` naming it: the venv's editable install comes after ``PYTHONPATH``, so the
console scripts the tests start (``ektp-agent``, ``ektp-central``) run the mutated code too.

A test catches a mutation when it fails (pytest exit 1 with at least one test failed, not only
errors in setup or teardown). A mutation is caught when every one of its tests catches it;
``--control`` first runs every test on the unmutated copy, where each must pass. The last line
is one JSON object: ``{"mutations": N, "caught": M, ...}``; exit 0 only if every mutation was
caught (and the control passed).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# short: the simulator's control socket under a test's tmp_path must fit a Unix socket path
SCRATCH = Path(os.environ.get("EKTP_MUTATION_DIR", "/tmp/ektpm"))
TEST_TIMEOUT_S = 600


@dataclass(frozen=True)
class Edit:
    path: str
    old: str
    new: str


@dataclass(frozen=True)
class Mutation:
    name: str
    breaks: str  # the promise, in a few words
    edits: tuple[Edit, ...]
    tests: tuple[str, ...]
    notes: str = ""


R1 = "tests/chaos/test_chaos.py::test_r1_sigkill_at_random_moments_loses_nothing"
R4 = "tests/chaos/test_chaos.py::test_r4_store_bound_refuses_cleanly_and_recovers"
R8 = "tests/chaos/test_chaos.py::test_r8_corrupt_outbox_is_quarantined_salvaged_and_reported"
S1 = "tests/chaos/test_chaos.py::test_s1_no_biometrics_or_keys_in_logs_or_cli_output"
R2 = "tests/chaos/test_chaos_link.py::test_r2_broker_killed_and_restarted_mid_drain"
R3 = "tests/chaos/test_chaos_link.py::test_r3_link_flaps_deliver_everything_without_operator_action"
R7 = "tests/chaos/test_chaos_link.py::test_r7_forged_replayed_and_garbage_acks_delete_nothing"
R5 = "tests/chaos/test_fault_matrix.py::test_r5_every_device_and_fault_kind_is_named_and_recovers"
POWER_CHILD = "tests/test_outbox_power_loss.py::test_the_outbox_syncs_the_wal_before_each_receipt"
POWER_SERVICE = "tests/test_outbox_power_loss.py::test_the_service_syncs_the_wal_before_it_answers_enroll"
HOSTILE = "tests/test_link.py::test_hostile_acks_delete_nothing"
DRAIN_E2E = "tests/test_link.py::test_drain_end_to_end_status_and_health"
E2E_KILL = "tests/test_service_e2e.py::test_sigkill_during_enroll_loop_every_receipt_exactly_once"
KIOSK_KILL = (
    "tests/test_link_processes.py::test_kiosk_sigkilled_mid_drain_will_seen_then_resumes_exactly_once"
)
ACL = "tests/test_link_auth.py::test_tls_client_certificates_with_the_per_kiosk_acl"
CONNACK_STOP = "tests/test_link_robustness.py::test_stop_while_waiting_for_connack_is_prompt"

MUTATIONS: tuple[Mutation, ...] = (
    Mutation(
        "fsync-off",
        "a receipt survives power loss (the writer connection at synchronous=OFF)",
        (
            Edit(
                "agent/outbox_schema.py",
                'conn.execute("PRAGMA synchronous=FULL")',
                'conn.execute("PRAGMA synchronous=OFF")',
            ),
        ),
        (POWER_CHILD, POWER_SERVICE),
    ),
    Mutation(
        "commit-without-fsync",
        "a receipt survives power loss (commit alone at synchronous=OFF, the pragmas read back FULL at open)",
        (
            Edit(
                "agent/outbox.py",
                "            try:\n                with write_transaction(conn):\n"
                "                    last_seq, held = conn.execute(\n",
                '            conn.execute("PRAGMA synchronous=OFF")\n'
                "            try:\n                with write_transaction(conn):\n"
                "                    last_seq, held = conn.execute(\n",
            ),
        ),
        (POWER_CHILD, POWER_SERVICE),
    ),
    Mutation(
        "ack-unverified",
        "only the centre's signed ack frees a packet (signature check skipped)",
        (Edit("wire/ack.py", "        key.verify(signature, signed)\n", "        pass  # mutation\n"),),
        (R7, HOSTILE),
    ),
    Mutation(
        "ack-bytes-unchecked",
        "an ack frees only the bytes it names (the SHA-256 not compared)",
        (
            Edit("agent/link/transfer.py", "        if t.sha256 != result.sha256:\n", "        if False:\n"),
            Edit(
                "agent/link/drain.py",
                "        if data is not None and packet_sha256(data) != r.sha256:\n",
                "        if False:\n",
            ),
        ),
        (R7, HOSTILE),
    ),
    Mutation(
        "resend-freed-packet",
        "a packet an ack freed is not sent again (read back into the window before its outcome is written)",
        (
            Edit(
                "agent/link/drain.py",
                "                if item.packet_id in self._delivered_unwritten:\n"
                "                    continue  # a verified ack freed it; the outbox does not know yet\n",
                "",
            ),
        ),
        (HOSTILE,),
    ),
    Mutation(
        "probe-behind-chunks",
        "the drain resumes after any reconnect (unsent probes take the byte budget, as before the fix)",
        (
            Edit(
                "agent/link/transfer.py",
                "        probes = sum(1 for t in self.transfers.values() if t.probe_out)\n",
                "        probes = sum(1 for t in self.transfers.values() if t.probing)\n",
            ),
            Edit(
                "agent/link/transfer.py",
                "        for t in self.transfers.values():\n"
                "            if t.probing and not t.probe_out and t.hold_until <= now:\n"
                "                return probe_chunk(t.packet_id, t.sha256, t.total)\n",
                "",
            ),
            Edit(
                "agent/link/transfer.py",
                "            if t.hold_until > now or t.probing:\n                continue\n",
                "            if t.hold_until > now:\n                continue\n"
                "            if t.probing:\n                if not t.probe_out:\n"
                "                    return probe_chunk(t.packet_id, t.sha256, t.total)\n"
                "                continue\n",
            ),
        ),
        ("tests/test_transfer.py::test_probes_waiting_behind_an_answered_packet_still_go",),
        "R3 hit it in two of about twenty runs (the drain stood still after a stall and two drops)",
    ),
    Mutation(
        "dropped-receipt",
        "every committed packet has its receipt (the service drops one receipt in three)",
        (
            Edit(
                "agent/service.py",
                '            yield {"receipt": receipt}\n',
                '            if int(receipt["seq"]) % 3 != 2:\n                yield {"receipt": receipt}\n',
            ),
        ),
        (R1, R2, R3, R7, E2E_KILL),
        "the old figures (lost = receipts missing at the centre, duplicated = repeated ids) pass this. "
        "One in three, so that R1's burst of three receipts always spans a dropped one: a receipt "
        "dropped right before a kill looks like the commit the kill cut off, which R1 must allow",
    ),
    Mutation(
        "drain-skips-a-packet",
        "every receipted packet reaches the centre (the drain frees one in seven unsent)",
        (
            Edit(
                "agent/link/drain.py",
                "            for item in batch:\n                cursor = max(cursor, item.seq)\n",
                "            for item in batch:\n                cursor = max(cursor, item.seq)\n"
                "                if item.seq % 7 == 3 and item.packet_id not in self._delivered_unwritten:\n"
                "                    self._delivered_unwritten.append(item.packet_id)\n"
                "                    continue\n",
            ),
        ),
        (DRAIN_E2E, KIOSK_KILL, R4),
    ),
    Mutation(
        "flap-never-cuts",
        "R3's flaps cut the kiosk's connection (the proxy's drop and stall do nothing)",
        (
            Edit(
                "tests/netkit.py",
                '        """Close every forwarded connection at once (a link cut)."""\n',
                '        """Close every forwarded connection at once (a link cut)."""\n        return  # mutation\n',
            ),
            Edit(
                "tests/netkit.py",
                "        (self.stalled.set if on else self.stalled.clear)()\n",
                "        pass  # mutation\n",
            ),
        ),
        (R3,),
    ),
    Mutation(
        "r2-kill-when-idle",
        "R2's broker kills land mid-drain (the test made to kill when the window is empty)",
        (
            Edit(
                "tests/chaos/test_chaos_link.py",
                'wait_link(k, lambda doc: doc["in_flight"] > 0, 30, "the drain sending")',
                'wait_link(k, lambda doc: doc["in_flight"] == 0, 30, "the drain idle")',
            ),
        ),
        (R2,),
    ),
    Mutation(
        "salvage-stops-early",
        "a damaged outbox gives up only the packets on damaged pages (salvage stops at the first loss)",
        (
            Edit(
                "agent/outbox_recovery.py",
                "        if row is None or not isinstance(row[0], bytes) or len(row[0]) != size:\n"
                "            report.note_lost(seq)\n            continue\n",
                "        if row is None or not isinstance(row[0], bytes) or len(row[0]) != size:\n"
                "            report.note_lost(seq)\n            return\n",
            ),
        ),
        (R8,),
        "the old R8 (0 < salvaged <= 40) passes this",
    ),
    Mutation(
        "generic-diag-detail",
        "diag names the kind of fault (every failed self-test says only 'self-test failed')",
        (
            Edit(
                "drivers/health.py",
                "    return SelfTestResult(device, state, str(exc), hint, tried)\n",
                '    return SelfTestResult(device, state, "self-test failed", hint, tried)\n',
            ),
        ),
        (R5,),
        "the old R5 (any failed diag counts as named) passes this",
    ),
    Mutation(
        "nik-in-debug-log",
        "no NIK in any log (the service logs the resident's NIK at DEBUG)",
        (
            Edit(
                "agent/service.py",
                "        outbox = self.outbox\n        receipt = await self._db(lambda: outbox.commit(build))\n",
                '        log.debug("enrolling resident %s", record.nik)\n'
                "        outbox = self.outbox\n        receipt = await self._db(lambda: outbox.commit(build))\n",
            ),
        ),
        (S1,),
        "the old S1 (logs at INFO) passes this",
    ),
    Mutation(
        "enroll-broken",
        "S1 searches a kit that works (every enrollment refused)",
        (
            Edit(
                "agent/service.py",
                '        direct = bool(request.get("direct"))\n',
                '        direct = bool(request.get("direct"))\n'
                '        raise ApiError("mutation: no enrollments", "bad-request")\n',
            ),
        ),
        (S1,),
        "the old S1 never looked at the enroll's exit code",
    ),
    Mutation(
        "acl-too-broad",
        "a kiosk cannot forge its own acks (the test's ACL lets a kiosk write all its topics)",
        (
            Edit(
                "tests/test_link_auth.py",
                '"pattern write ektp/v1/%u/status\\npattern write ektp/v1/%u/health\\n"\n'
                '        "pattern write ektp/v1/%u/enrollment\\npattern read ektp/v1/%u/ack\\n"',
                '"pattern write ektp/v1/%u/#\\npattern read ektp/v1/%u/ack\\n"',
            ),
        ),
        (ACL,),
    ),
    Mutation(
        "stop-waits-for-connack",
        "stop() does not wait out the CONNACK timeout",
        (
            Edit(
                "agent/link/drain.py",
                "event = await self._next_event(deadline - time.monotonic(), self._stopping)",
                "event = await self._next_event(deadline - time.monotonic(), asyncio.Event())",
            ),
        ),
        (CONNACK_STOP,),
    ),
)


@dataclass
class Result:
    test: str
    outcome: str  # "failed" (caught), "passed", "error" (setup/teardown only), "timeout"
    seconds: float
    detail: str = ""


@dataclass
class Report:
    mutation: Mutation
    results: list[Result] = field(default_factory=list)

    @property
    def caught(self) -> bool:
        return bool(self.results) and all(r.outcome == "failed" for r in self.results)


def export_tree(dest: Path, worktree: bool) -> None:
    """The project as committed (or the working tree) into ``dest``, without .git and .venv."""
    if dest.exists():
        shutil.rmtree(dest)
    if worktree:
        ignore = shutil.ignore_patterns(".git", ".venv", "var", "*.egg-info", "__pycache__", ".*_cache")
        shutil.copytree(ROOT, dest, ignore=ignore)
        return
    dest.mkdir(parents=True)
    blob = subprocess.run(["git", "archive", "HEAD"], cwd=ROOT, check=True, capture_output=True).stdout
    with tarfile.open(fileobj=io.BytesIO(blob)) as tar:
        tar.extractall(dest, filter="data")


def apply(tree: Path, mutation: Mutation) -> None:
    for edit in mutation.edits:
        path = tree / edit.path
        text = path.read_text()
        n = text.count(edit.old)
        if n != 1:
            raise SystemExit(
                f"mutation {mutation.name}: the text to replace occurs {n} times in {edit.path} "
                "(it must occur once); update bench/mutation.py to the code as it is now"
            )
        path.write_text(text.replace(edit.old, edit.new))


def run_test(tree: Path, test: str, work: Path) -> Result:
    """One test, alone, in ``tree``, its tmp_path under ``work``: its outcome from pytest's JUnit XML."""
    work.parent.mkdir(parents=True, exist_ok=True)
    junit = work.with_suffix(".xml")
    env = {**os.environ, "PYTHONPATH": str(tree), "PYTHONDONTWRITEBYTECODE": "1"}
    env.pop("EKTP_CHAOS", None)  # the bounded versions
    cmd = [
        sys.executable,
        "-m",
        "pytest",
        "-q",
        "-x",
        "-p",
        "no:cacheprovider",
        "--basetemp",
        str(work),
        "--junitxml",
        str(junit),
        test,
    ]
    started = time.monotonic()
    try:
        p = subprocess.run(cmd, cwd=tree, env=env, capture_output=True, text=True, timeout=TEST_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return Result(test, "timeout", time.monotonic() - started)
    seconds = time.monotonic() - started
    work.with_suffix(".out").write_text(p.stdout + p.stderr)
    failed = errors = passed = 0
    detail = ""
    if junit.exists():
        for case in ET.parse(junit).getroot().iter("testcase"):
            failure = case.find("failure")
            error = case.find("error")
            if failure is not None:
                failed += 1
                detail = detail or _first_line(failure.get("message") or failure.text or "")
            elif error is not None:
                errors += 1
                detail = detail or _first_line(error.get("message") or error.text or "")
            elif case.find("skipped") is None:
                passed += 1
    if failed:
        outcome = "failed"
    elif errors or p.returncode not in (0, 1):
        outcome = "error"
        detail = detail or _first_line(p.stdout.strip().splitlines()[-1] if p.stdout.strip() else p.stderr)
    elif passed and p.returncode == 0:
        outcome = "passed"
    else:
        outcome = "error"
        detail = detail or f"pytest exit {p.returncode}, nothing ran"
    return Result(test, outcome, seconds, detail)


def _first_line(text: str) -> str:
    line = next((x for x in text.strip().splitlines() if x.strip()), "")
    return re.sub(r"\s+", " ", line)[:200]


def short(test: str) -> str:
    return test.split("::")[-1]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("names", nargs="*", help="mutations to run (default: all)")
    ap.add_argument("--list", action="store_true", help="list the mutations and their tests")
    ap.add_argument("--worktree", action="store_true", help="copy the working tree instead of HEAD")
    ap.add_argument("--control", action="store_true", help="first run every test on the unmutated copy")
    ap.add_argument("--check", action="store_true", help="only check that every mutation still applies")
    args = ap.parse_args()
    chosen = [m for m in MUTATIONS if not args.names or m.name in args.names]
    unknown = set(args.names) - {m.name for m in MUTATIONS}
    if unknown:
        ap.error(f"unknown mutation(s): {', '.join(sorted(unknown))}; see --list")
    if args.list:
        for m in MUTATIONS:
            print(f"{m.name:24} breaks: {m.breaks}")
            for t in m.tests:
                print(f"{'':24}   {t}")
        return 0

    if args.check:
        for m in chosen:
            tree = SCRATCH / f"m{MUTATIONS.index(m):02d}" / "tree"
            export_tree(tree, args.worktree)
            apply(tree, m)
            print(f"{m.name:24} applies")
        return 0

    started = time.monotonic()
    control_ok = True
    if args.control:
        tree = SCRATCH / "c" / "tree"
        export_tree(tree, args.worktree)
        tests = sorted({t for m in chosen for t in m.tests})
        for i, test in enumerate(tests):
            r = run_test(tree, test, SCRATCH / "c" / f"t{i}")
            ok = r.outcome == "passed"
            control_ok &= ok
            print(
                f"control  {'passed' if ok else r.outcome.upper():8} {r.seconds:6.1f} s  {short(test)}  {r.detail}"
            )
            sys.stdout.flush()

    reports: list[Report] = []
    for m in chosen:
        home = SCRATCH / f"m{MUTATIONS.index(m):02d}"  # short paths (see SCRATCH)
        tree = home / "tree"
        export_tree(tree, args.worktree)
        apply(tree, m)
        report = Report(m)
        for i, test in enumerate(m.tests):
            r = run_test(tree, test, home / f"t{i}")
            report.results.append(r)
            verdict = "caught" if r.outcome == "failed" else f"MISSED ({r.outcome})"
            print(f"{m.name:24} {verdict:16} {r.seconds:6.1f} s  {short(test)}: {r.detail}")
            sys.stdout.flush()
        reports.append(report)

    caught = sum(r.caught for r in reports)
    summary = {
        "mutations": len(reports),
        "caught": caught,
        "missed": [r.mutation.name for r in reports if not r.caught],
        "tests_run": sum(len(r.results) for r in reports),
        "control": ("passed" if control_ok else "FAILED") if args.control else "not run",
        "tree": "working tree" if args.worktree else _head(),
        "minutes": round((time.monotonic() - started) / 60, 1),
    }
    print(json.dumps(summary))
    return 0 if caught == len(reports) and control_ok else 1


def _head() -> str:
    p = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    return p.stdout.strip()


if __name__ == "__main__":
    sys.exit(main())
