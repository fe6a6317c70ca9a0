"""Bytes per enrollment before and after the record's compression, per modality, with each
modality's quality measure before and after, over synthetic residents.

For each resident (seeds 0..N-1) the bench builds the record version 1 sent (PNG fingers and
irises, the camera's JPEG of quality 85: ``agent.synthetic.record_from_resident(...,
compressed=False)``), compresses it as the kiosk does (``agent.compression.compress_record``,
at the settings of ``wire.image_codec``), and seals both as packets. It decodes the version 2
record back (``EnrollmentRecord.from_bytes``, as the centre reads it) and measures each
modality's quality on what comes out, against the same measure on the uncompressed image:

- fingers: ``drivers.fingerprint.device.image_quality`` (ridge contrast x coverage), per finger;
- face: the camera's score (``drivers.camera.quality.assess_jpeg``: exposure x clipping x sharpness);
- irises: ``drivers.iris.quality.iris_quality`` (focus x contrast x margin, after ISO/IEC 29794-6);
- signature: exact (the time series decodes to the same strokes, the rendered PNG is unchanged).

A modality holds its margin when no image of any resident lost more than ``*_MARGIN`` of its
score (0..1); ``quality_margin_held`` is all of them. PSNR (dB, against the uncompressed image)
is a fidelity figure beside the scores. The encode time is ``compress_record`` plus
``to_bytes`` (what the kiosk spends per enrollment). Bytes per enrollment is the median size of
the sealed packet (record plus the packet's header, ephemeral key, tag and signature); a
modality's bytes are what the record carries for it (version 1: its images, or the strokes and
PNG; version 2: its ISO/IEC 19794 record, headers included); "metadata" is the rest of the record.

``--sweep`` also encodes every image at a few other settings per modality (finger and iris JPEG
2000 ratios, face JPEG qualities) and prints size against the worst quality drop, the table the
chosen settings come from (docs/benchmarks.md, "Record size").

    .venv/bin/python bench/record_size.py                    # 100 residents, 4-bit fingers
    .venv/bin/python bench/record_size.py --sweep            # and the settings sweep
    .venv/bin/python bench/record_size.py --residents 4      # a quick check (tests/test_record_size_bench.py)
    .venv/bin/python bench/record_size.py --finger-bits 8    # the simulator's full 8-bit fingers

Progress goes to stderr; the last line of stdout is one JSON object. Exit status 0 whatever the
figures (a measurement); 2 on bad arguments.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import math
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from PIL import Image, ImageChops, ImageStat

from agent.compression import compress_record
from agent.synthetic import record_from_resident
from drivers.camera.quality import assess_jpeg
from drivers.fingerprint.device import image_quality
from drivers.iris.quality import iris_quality
from hw_sim.residents import synthetic_resident
from tests.record_v1 import record_v1_bytes
from wire.image_codec import (
    FACE_JPEG_QUALITY,
    FINGER_J2K_RATIO,
    IRIS_J2K_RATIO,
    face_jpeg,
    gray_jp2,
    gray_pixels,
)
from wire.packet import seal
from wire.record import EnrollmentRecord, FingerPosition

# The stated margins: how much of its quality score (0..1) one image may lose to the compression.
# 0.05 is a twentieth of the scale, less than what separates a capture the agent keeps from one
# it retakes; the signature is compressed losslessly (a time series and a PNG) and must be exact.
FINGER_MARGIN = 0.05  # drivers.fingerprint.device.image_quality, per finger
FACE_MARGIN = 0.05  # drivers.camera.quality (assess_jpeg), per face
IRIS_MARGIN = 0.05  # drivers.iris.quality.iris_quality, per eye
GOAL_BYTES = 100_000  # the goal: <= 100 KB per enrollment (sealed packet)

SWEEP_FINGER_RATIOS = (10, 12, 15, 20)
SWEEP_IRIS_RATIOS = (30, 40, 60, 80)
SWEEP_FACE_QUALITIES = (60, 65, 70, 80)
KIOSK_ID = "320715-01"


class _RecordV1(EnrollmentRecord):
    """A record whose packet body is the version 1 layout: to seal what a kiosk of then sealed."""

    __slots__ = ()

    def to_bytes(self) -> bytes:
        return record_v1_bytes(self)


def _as_v1(record: EnrollmentRecord) -> _RecordV1:
    return _RecordV1(**{f.name: getattr(record, f.name) for f in dataclasses.fields(record)})


def _sealed_bytes(
    record: EnrollmentRecord, seq: int, kiosk: Ed25519PrivateKey, centre: X25519PrivateKey
) -> int:
    sealed = seal(
        record,
        kiosk_id=KIOSK_ID,
        seq=seq,
        kiosk_key=kiosk,
        central_public=centre.public_key(),
        clock_synced=True,
    )
    return len(sealed.data)


def _psnr(a: Image.Image, b: Image.Image) -> float:
    rms = ImageStat.Stat(ImageChops.difference(a, b)).rms
    mse = sum(r * r for r in rms) / len(rms)
    return 99.0 if mse == 0 else 10 * math.log10(255 * 255 / mse)


def _image(blob: bytes, mode: str) -> Image.Image:
    with Image.open(io.BytesIO(blob)) as img:
        return img.convert(mode)


def _gray_quality(blob: bytes, measure: Callable[[bytes, int, int], float]) -> float:
    return measure(*gray_pixels(blob))


class Modality:
    """What one modality measured over the run: bytes, scores and PSNR per image."""

    def __init__(self, name: str, margin: float | None) -> None:
        self.name = name
        self.margin = margin
        self.bytes_before: list[int] = []
        self.bytes_after: list[int] = []
        self.image_bytes_after: list[int] = []  # the images alone, without the interchange headers
        self.q_before: list[float] = []
        self.q_after: list[float] = []
        self.psnr: list[float] = []
        self.exact: list[bool] = []

    def drops(self) -> list[float]:
        return [b - a for b, a in zip(self.q_before, self.q_after, strict=True)]

    def held(self) -> bool:
        if self.margin is None:
            return all(self.exact)
        return all(d <= self.margin + 1e-9 for d in self.drops())

    def figures(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "bytes_before": statistics.median(self.bytes_before),
            "bytes_after": statistics.median(self.bytes_after),
            "image_bytes_after": statistics.median(self.image_bytes_after),
            "margin": self.margin if self.margin is not None else "exact",
            "held": self.held(),
        }
        if self.margin is None:
            out["exact"] = f"{sum(self.exact)}/{len(self.exact)}"
            return out
        drops = self.drops()
        out |= {
            "images": len(drops),
            "quality_before_median": round(statistics.median(self.q_before), 3),
            "quality_after_median": round(statistics.median(self.q_after), 3),
            "quality_before_min": round(min(self.q_before), 3),
            "quality_after_min": round(min(self.q_after), 3),
            "quality_drop_median": round(statistics.median(drops), 4),
            "quality_drop_max": round(max(drops), 4),
            "psnr_db_median": round(statistics.median(self.psnr), 2),
            "psnr_db_min": round(min(self.psnr), 2),
        }
        return out


def measure(args: argparse.Namespace, say: Callable[[str], None]) -> dict[str, Any]:
    kiosk, centre = Ed25519PrivateKey.generate(), X25519PrivateKey.generate()
    mods = {
        "face": Modality("face", FACE_MARGIN),
        "fingers": Modality("fingers", FINGER_MARGIN),
        "irises": Modality("irises", IRIS_MARGIN),
        "signature": Modality("signature", None),
    }
    packet_before, packet_after, record_before, record_after, meta_before, meta_after = [], [], [], [], [], []
    encode_ms, render_s = [], 0.0
    sweep_input: list[EnrollmentRecord] = []
    for n, seed in enumerate(range(args.residents)):
        t0 = time.perf_counter()
        plain = record_from_resident(synthetic_resident(seed), finger_bits=args.finger_bits, compressed=False)
        t1 = time.perf_counter()
        compressed = compress_record(plain)
        body = compressed.to_bytes()
        t2 = time.perf_counter()
        render_s += t1 - t0
        encode_ms.append((t2 - t1) * 1000)
        v1 = record_v1_bytes(plain)
        packet_after.append(_sealed_bytes(compressed, seed + 1, kiosk, centre))
        packet_before.append(_sealed_bytes(_as_v1(plain), seed + 1, kiosk, centre))
        record_before.append(len(v1))
        record_after.append(len(body))
        back = EnrollmentRecord.from_bytes(body)  # what the centre reads
        parts = compressed.interchange_records()

        # bytes per modality
        fingers_before = [
            f.image for pos in FingerPosition if (f := plain.fingerprints[pos]).image is not None
        ]
        fingers_after = [f.image for pos in FingerPosition if (f := back.fingerprints[pos]).image is not None]
        sizes_before = {
            "face": len(plain.face.image),
            "fingers": sum(len(b) for b in fingers_before),
            "irises": len(plain.right_iris.image) + len(plain.left_iris.image),
            "signature": len(plain.signature.strokes_bytes()) + len(plain.signature.png),
        }
        sizes_after = {
            "face": len(parts["face"]),
            "fingers": len(parts.get("finger", b"")),
            "irises": len(parts["iris"]),
            "signature": len(parts["signature"]) + len(compressed.signature.png),
        }
        images_after = {
            "face": len(back.face.image),
            "fingers": sum(len(b) for b in fingers_after),
            "irises": len(back.right_iris.image) + len(back.left_iris.image),
            "signature": sizes_after["signature"],
        }
        for name, mod in mods.items():
            mod.bytes_before.append(sizes_before[name])
            mod.bytes_after.append(sizes_after[name])
            mod.image_bytes_after.append(images_after[name])
        meta_before.append(len(v1) - sum(sizes_before.values()))
        meta_after.append(len(body) - sum(sizes_after.values()))

        # quality before and after, per image
        face = mods["face"]
        face.q_before.append(assess_jpeg(plain.face.image).quality)
        face.q_after.append(assess_jpeg(back.face.image).quality)
        face.psnr.append(_psnr(_image(plain.face.image, "RGB"), _image(back.face.image, "RGB")))
        for before, after in zip(fingers_before, fingers_after, strict=True):
            mods["fingers"].q_before.append(_gray_quality(before, image_quality))
            mods["fingers"].q_after.append(_gray_quality(after, image_quality))
            mods["fingers"].psnr.append(_psnr(_image(before, "L"), _image(after, "L")))
        for before, after in ((plain.right_iris, back.right_iris), (plain.left_iris, back.left_iris)):
            mods["irises"].q_before.append(_gray_quality(before.image, iris_quality))
            mods["irises"].q_after.append(_gray_quality(after.image, iris_quality))
            mods["irises"].psnr.append(_psnr(_image(before.image, "L"), _image(after.image, "L")))
        mods["signature"].exact.append(
            back.signature.strokes == plain.signature.strokes and back.signature.png == plain.signature.png
        )
        if args.sweep:
            sweep_input.append(plain)
        if (n + 1) % 10 == 0 or n + 1 == args.residents:
            say(
                f"{n + 1}/{args.residents} residents: packet {statistics.median(packet_before) / 1e3:.1f} KB -> "
                f"{statistics.median(packet_after) / 1e3:.1f} KB (median), encode {statistics.median(encode_ms):.0f} ms"
            )

    after, before = statistics.median(packet_after), statistics.median(packet_before)
    held = all(m.held() for m in mods.values())
    fig: dict[str, Any] = {
        "residents": args.residents,
        "finger_bits": args.finger_bits,
        "bytes_per_enrollment": after,
        "bytes_per_enrollment_before": before,
        "bytes_per_enrollment_max": max(packet_after),
        "bytes_per_enrollment_basis": "sealed packet (record version 2 vs version 1), median",
        "record_bytes": statistics.median(record_after),
        "record_bytes_before": statistics.median(record_before),
        "reduction": round(1 - after / before, 3),
        "goal_bytes": GOAL_BYTES,
        "goal_met": after <= GOAL_BYTES and held,
        "quality_margin_held": held,
        "margins": {
            "face": FACE_MARGIN,
            "fingers": FINGER_MARGIN,
            "irises": IRIS_MARGIN,
            "signature": "exact",
        },
        "settings": {
            "finger_j2k_ratio": FINGER_J2K_RATIO,
            "iris_j2k_ratio": IRIS_J2K_RATIO,
            "face_jpeg_quality": FACE_JPEG_QUALITY,
        },
        "modalities": {name: m.figures() for name, m in mods.items()},
        "metadata_bytes_before": statistics.median(meta_before),
        "metadata_bytes_after": statistics.median(meta_after),
        "encode_ms_median": round(statistics.median(encode_ms), 1),
        "encode_ms_max": round(max(encode_ms), 1),
        "render_s_per_resident": round(render_s / args.residents, 2),
    }
    fig |= {f"{name}_bytes_before": m.figures()["bytes_before"] for name, m in mods.items()}
    fig |= {f"{name}_bytes_after": m.figures()["bytes_after"] for name, m in mods.items()}
    fig |= {f"{name}_quality_drop_max": m.figures().get("quality_drop_max") for name, m in mods.items()}
    if args.sweep:
        fig["sweep"] = sweep(sweep_input, statistics.median(record_after), say)
    return fig


def sweep(
    records: list[EnrollmentRecord], record_median: float, say: Callable[[str], None]
) -> list[dict[str, Any]]:
    """Each modality at each setting: its images' bytes (median per enrollment), worst drop, PSNR."""
    rows: list[dict[str, Any]] = []
    chosen = {"fingers": FINGER_J2K_RATIO, "irises": IRIS_J2K_RATIO, "face": FACE_JPEG_QUALITY}
    plans: list[tuple[str, str, tuple[int, ...], float]] = [
        ("fingers", "j2k_ratio", SWEEP_FINGER_RATIOS, FINGER_MARGIN),
        ("irises", "j2k_ratio", SWEEP_IRIS_RATIOS, IRIS_MARGIN),
        ("face", "jpeg_quality", SWEEP_FACE_QUALITIES, FACE_MARGIN),
    ]
    for modality, knob, settings, margin in plans:
        results = {s: {"bytes": [], "drops": [], "psnr": []} for s in settings}
        for record in records:
            for setting in settings:
                r = results[setting]
                size, drops, psnrs = _encode_modality(record, modality, setting)
                r["bytes"].append(size)
                r["drops"].extend(drops)
                r["psnr"].extend(psnrs)
        chosen_bytes = (
            statistics.median(results[chosen[modality]]["bytes"]) if chosen[modality] in results else None
        )
        for setting in settings:
            r = results[setting]
            row = {
                "modality": modality,
                knob: setting,
                "chosen": setting == chosen[modality],
                "image_bytes": statistics.median(r["bytes"]),
                "quality_drop_max": round(max(r["drops"]), 4),
                "quality_drop_median": round(statistics.median(r["drops"]), 4),
                "psnr_db_median": round(statistics.median(r["psnr"]), 2),
                "held": max(r["drops"]) <= margin + 1e-9,
            }
            if chosen_bytes is not None:
                row["record_bytes_est"] = round(record_median - chosen_bytes + row["image_bytes"])
            rows.append(row)
        say(f"sweep: {modality} done")
    return rows


def _encode_modality(
    record: EnrollmentRecord, modality: str, setting: int
) -> tuple[int, list[float], list[float]]:
    if modality == "face":
        before = record.face.image
        after = face_jpeg(before, quality=setting)
        drop = assess_jpeg(before).quality - assess_jpeg(after).quality
        return len(after), [drop], [_psnr(_image(before, "RGB"), _image(after, "RGB"))]
    if modality == "fingers":
        blobs = [f.image for f in record.fingerprints.values() if f.image is not None]
        measure: Callable[[bytes, int, int], float] = image_quality
    else:
        blobs = [record.right_iris.image, record.left_iris.image]
        measure = iris_quality
    size, drops, psnrs = 0, [], []
    for blob in blobs:
        pixels, width, height = gray_pixels(blob)
        out = gray_jp2(pixels, width, height, ratio=setting)
        size += len(out)
        after = gray_pixels(out)[0]
        drops.append(measure(pixels, width, height) - measure(after, width, height))
        psnrs.append(
            _psnr(Image.frombytes("L", (width, height), pixels), Image.frombytes("L", (width, height), after))
        )
    return size, drops, psnrs


def summary(fig: dict[str, Any]) -> list[str]:
    lines = [
        f"{fig['residents']} synthetic residents, {fig['finger_bits']}-bit fingers; fingers J2K "
        f"{fig['settings']['finger_j2k_ratio']}:1, irises J2K {fig['settings']['iris_j2k_ratio']}:1, "
        f"face JPEG q{fig['settings']['face_jpeg_quality']}",
        f"bytes per enrollment (sealed packet, median): {fig['bytes_per_enrollment_before'] / 1e3:.1f} KB -> "
        f"{fig['bytes_per_enrollment'] / 1e3:.1f} KB ({fig['reduction']:.0%} less; max "
        f"{fig['bytes_per_enrollment_max'] / 1e3:.1f} KB; goal <= {fig['goal_bytes'] / 1e3:.0f} KB with the "
        f"margins held: {'met' if fig['goal_met'] else 'NOT met'})",
        f"  record {fig['record_bytes_before'] / 1e3:.1f} KB -> {fig['record_bytes'] / 1e3:.1f} KB; metadata "
        f"{fig['metadata_bytes_before']} -> {fig['metadata_bytes_after']} B",
    ]
    for name, m in fig["modalities"].items():
        head = f"  {name:9s} {m['bytes_before'] / 1e3:7.1f} KB -> {m['bytes_after'] / 1e3:6.1f} KB"
        if m["margin"] == "exact":
            lines.append(f"{head}; exact {m['exact']} ({'held' if m['held'] else 'NOT held'})")
            continue
        lines.append(
            f"{head}; quality {m['quality_before_median']:.3f} -> {m['quality_after_median']:.3f} (median), "
            f"drop max {m['quality_drop_max']:.4f} (margin {m['margin']}: {'held' if m['held'] else 'NOT held'}), "
            f"PSNR {m['psnr_db_median']:.1f} dB (min {m['psnr_db_min']:.1f}) over {m['images']} images"
        )
    lines.append(
        f"  encode (compress_record + to_bytes) {fig['encode_ms_median']:.0f} ms per enrollment "
        f"(max {fig['encode_ms_max']:.0f} ms); quality margins held: {fig['quality_margin_held']}"
    )
    for row in fig.get("sweep", []):
        knob = "j2k_ratio" if "j2k_ratio" in row else "jpeg_quality"
        lines.append(
            f"  sweep {row['modality']:8s} {knob} {row[knob]:3d}{' *' if row['chosen'] else '  '} "
            f"{row['image_bytes'] / 1e3:6.1f} KB, drop max {row['quality_drop_max']:.4f} "
            f"(median {row['quality_drop_median']:.4f}), PSNR {row['psnr_db_median']:.1f} dB, "
            f"record ~{row.get('record_bytes_est', 0) / 1e3:.1f} KB, {'held' if row['held'] else 'NOT held'}"
        )
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--residents", type=int, default=100, help="synthetic residents, seeds 0..N-1 (default 100)"
    )
    parser.add_argument(
        "--finger-bits", type=int, choices=(4, 8), default=4, help="finger gray depth (default 4)"
    )
    parser.add_argument("--sweep", action="store_true", help="also try other settings per modality")
    args = parser.parse_args(argv)
    if args.residents < 1:
        parser.error("--residents must be positive")

    def say(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    fig = measure(args, say)
    print("\n".join(summary(fig)))
    print(json.dumps(fig))
    return 0


if __name__ == "__main__":
    sys.exit(main())
