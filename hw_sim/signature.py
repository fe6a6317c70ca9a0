"""A simulated ISDV4 (W8001) signature pad on a pty: the driver's codec run in reverse.

Host commands are single bytes: '*' is answered with the query reply (the pad's
maxima), '1' streams the current resident's signature as pen packets (tip down along
each stroke, a tip-up report after each, proximity out at the end), '0' stops (also in
the middle of a signature). The touch query '%' gets no answer (a pen-only pad).

Pace and line: a real pad reports the pen ~133 times a second, so a signature of a few
hundred points takes a second or two; the simulated pad streams at that pace unless it
is made ``instant`` (load tests). It speaks 19200 baud (older models, the default) or
38400 (newer ones), and hears nothing at the other rate.

Faults: unplug, timeout and slow as every serial device; garbage = line noise before
each packet, ending in a false lead byte (the driver must skip the broken packet and
resync); bad-checksum = ISDV4 has no checksum, its one integrity rule is that bytes
after the first are 7-bit, so bit 7 is set in a body byte of every packet; low-quality
= a short scribble; device-error = a query reply with zero maxima (a pad whose sensor
has failed its calibration), which the kernel driver would register as a 0 x 0 tablet.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import ClassVar

from drivers.signature.messages import HostCommand, PenReport, QueryReply
from hw_sim.faults import FaultBoard, FaultKind
from hw_sim.pty_link import SerialSimDevice
from hw_sim.residents import SIG_MAX_P, SIG_MAX_X, SIG_MAX_Y, ResidentDesk

FIRMWARE_VERSION = 0x0213
SIM_PEN_INTERVAL_S = 1 / 133  # between pen reports, as a real pad (ISDV4: ~133 reports/s)
BAUD_RATES = (19200, 38400)
LOW_QUALITY_POINTS = 6  # the scribble of a low-quality signature
GARBAGE_BYTES = (4, 12)
_NOISE7 = bytes(range(0x80))


class SimSignaturePad(SerialSimDevice):
    name = "signature"
    default_baud: ClassVar[int] = 19200

    def __init__(
        self,
        sim_dir: Path,
        faults: FaultBoard,
        desk: ResidentDesk,
        *,
        baud: int | None = None,
        throttle: bool = False,
        instant: bool = False,
        seed: int = 0,
    ) -> None:
        if baud is not None and baud not in BAUD_RATES:
            raise ValueError(f"an ISDV4 pad speaks 19200 or 38400 baud, not {baud}")
        super().__init__(sim_dir, faults, desk, baud=baud, throttle=throttle, seed=seed)
        self.instant = instant  # stream a signature at once instead of at the pen's pace
        self.streaming = False

    def status(self) -> dict[str, object]:
        return {
            **super().status(),
            "streaming": self.streaming,
            "instant": self.instant,
            "resident": self.desk.current().seed,
        }

    def reset_stream(self) -> None:
        self.streaming = False

    def on_bytes(self, data: bytes, fault: FaultKind | None) -> None:
        for byte in data:
            try:
                command = HostCommand(bytes([byte]))
            except ValueError:
                self.counters["bad_frames"] += 1  # not a command: the firmware ignores it
                continue
            self.counters["requests"] += 1
            if command is HostCommand.STOP:
                self.streaming = False
            elif command is HostCommand.PEN_QUERY:
                self._query(fault)
            elif command is HostCommand.START:
                self.streaming = True
                self._sign(fault)

    def _query(self, fault: FaultKind | None) -> None:
        if fault is FaultKind.DEVICE_ERROR:
            reply = QueryReply(0, 0, 0, FIRMWARE_VERSION)
        else:
            reply = QueryReply(SIG_MAX_X, SIG_MAX_Y, SIG_MAX_P, FIRMWARE_VERSION)
        self._send_packet(reply.to_bytes(), fault)

    def _sign(self, fault: FaultKind | None) -> None:
        strokes = self.desk.current().signature_strokes()
        if fault is FaultKind.LOW_QUALITY:
            strokes = [strokes[0][:LOW_QUALITY_POINTS]]
        packets: list[bytes] = []
        for stroke in strokes:
            packets += [PenReport(x, y, p, proximity=True, tip=True).to_bytes() for x, y, p in stroke]
            x, y, _ = stroke[-1]
            packets.append(PenReport(x, y, 0, proximity=True, tip=False).to_bytes())
        x, y, _ = strokes[-1][-1]
        packets.append(PenReport(x, y, 0, proximity=False, tip=False).to_bytes())
        interval = 0.0 if self.instant else SIM_PEN_INTERVAL_S
        started = time.monotonic()
        heard = b""
        for i, packet in enumerate(packets):
            if interval:
                delay = started + i * interval - time.monotonic()  # on a fixed schedule: no drift
                if delay > 0 and self._stop.wait(delay):
                    return
                heard += self.port.read(0)  # the host may speak while the pen moves
                if HostCommand.STOP.value in heard:
                    break
            self._send_packet(packet, fault)
        self.streaming = False
        if heard:
            self.on_bytes(heard, fault)  # what the host said meanwhile, in order (a stop included)

    def _send_packet(self, raw: bytes, fault: FaultKind | None) -> None:
        packet = bytearray(raw)
        if fault is FaultKind.BAD_CHECKSUM:
            packet[4] |= 0x80
        if fault is FaultKind.GARBAGE:
            noise = self.junk(self.rng.randrange(*GARBAGE_BYTES), _NOISE7)
            false_lead = bytes([0x80 | self.rng.randrange(0x80) & ~0x10 | 0x40]) + self.junk(3, _NOISE7)
            packet[0:0] = noise + false_lead
        self.send(bytes(packet))
