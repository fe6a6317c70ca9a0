"""Partial transfers in the central store, on SQLite and on PostgreSQL: chunks kept durably
in one transaction per batch, the prefix held from (offset, length) rows, the exact packet
assembled from out-of-order, overlapping and repeated chunks, expiry and the listing."""

from __future__ import annotations

import hashlib
import itertools
import random
from collections.abc import Iterator
from pathlib import Path

import pytest

import central.store
from central.store import CentralStore, StoreInputError, open_store
from tests import centralkit
from wire.chunk import Chunk, chunk_of, probe

KIOSK = "320715-01"
PEER = "320715-02"
PACKET_ID = "01890a5d-ac96-774b-bcce-b302099a8057"


@pytest.fixture(params=centralkit.BACKENDS)
def url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    yield from centralkit.store_url(request.param, tmp_path)


@pytest.fixture
def store(url: str) -> Iterator[CentralStore]:
    with open_store(url) as s:
        yield s


def packet(size: int = 10_000, seed: int = 1) -> tuple[bytes, str]:
    data = random.Random(seed).randbytes(size)
    return data, hashlib.sha256(data).hexdigest()


def at(data: bytes, sha: str, offset: int, size: int, packet_id: str = PACKET_ID) -> Chunk:
    return chunk_of(packet_id, sha, data, offset, size)


def test_chunks_in_order_grow_the_prefix_and_assemble_the_packet(store: CentralStore) -> None:
    data, sha = packet(10_000)
    assert store.partial_have(KIOSK, PACKET_ID, sha) == 0
    assert store.assemble_partial(KIOSK, PACKET_ID, sha) is None
    for offset in range(0, 10_000, 3000):
        (have,) = store.add_chunks([(KIOSK, at(data, sha, offset, 3000))])
        assert have == min(offset + 3000, 10_000)
    assert store.partial_have(KIOSK, PACKET_ID, sha) == 10_000
    assert store.assemble_partial(KIOSK, PACKET_ID, sha) == data


def test_out_of_order_overlapping_and_repeated_chunks_give_the_exact_bytes(
    url: str, store: CentralStore
) -> None:
    data, sha = packet(10_007, seed=7)
    spans = [(6000, 2500), (0, 1000), (6000, 2500), (500, 2000), (2500, 1000), (8000, 3000), (3500, 2600)]
    expected_prefix = [0, 1000, 1000, 2500, 3500, 3500, 10_007]
    for (offset, size), expected in zip(spans, expected_prefix, strict=True):
        (have,) = store.add_chunks([(KIOSK, at(data, sha, offset, size))])
        assert have == expected, (offset, size)
        assert (store.assemble_partial(KIOSK, PACKET_ID, sha) is not None) == (expected == len(data))
    assert store.assemble_partial(KIOSK, PACKET_ID, sha) == data
    with open_store(url) as reopened:  # durable: another connection assembles the same bytes
        assert reopened.assemble_partial(KIOSK, PACKET_ID, sha) == data
    (row,) = store.partials()
    assert (row["have"], row["total"], row["chunks"]) == (10_007, 10_007, 6)  # the repeat kept once


@pytest.mark.parametrize("seed", range(4))
def test_random_chunkings_in_random_order_in_one_batch(store: CentralStore, seed: int) -> None:
    rng = random.Random(seed)
    data, sha = packet(rng.randrange(1, 50_000), seed=seed)
    cuts = sorted({0, len(data), *(rng.randrange(len(data)) for _ in range(rng.randrange(0, 12)))})
    chunks = [at(data, sha, a, b - a) for a, b in itertools.pairwise(cuts)]
    chunks += [
        at(data, sha, a, rng.randrange(1, 4000)) for a in rng.sample(range(len(data)), min(5, len(data)))
    ]
    chunks += rng.sample(chunks, min(3, len(chunks)))  # repeats
    rng.shuffle(chunks)
    held = chunks[: len(chunks) // 2]
    first = store.add_chunks([(KIOSK, c) for c in held])
    prefix = _prefix([(c.offset, len(c.data)) for c in held])
    assert first == [prefix] * len(held), "each item reports the prefix held once the batch is in"
    assert store.add_chunks([(KIOSK, c) for c in chunks]) == [len(data)] * len(chunks)
    assert store.assemble_partial(KIOSK, PACKET_ID, sha) == data


def _prefix(spans: list[tuple[int, int]]) -> int:
    have = 0
    for offset, size in sorted(spans):
        if offset <= have:
            have = max(have, offset + size)
    return have


def test_a_gap_holds_the_prefix_back_and_nothing_is_assembled(store: CentralStore) -> None:
    data, sha = packet(9000)
    assert store.add_chunks([(KIOSK, at(data, sha, 0, 3000)), (KIOSK, at(data, sha, 6000, 3000))]) == [
        3000,
        3000,
    ]
    assert store.assemble_partial(KIOSK, PACKET_ID, sha) is None
    assert store.partial_have(KIOSK, PACKET_ID, sha) == 3000
    assert store.add_chunks([(KIOSK, at(data, sha, 3000, 2999))]) == [5999]  # one byte short
    assert store.assemble_partial(KIOSK, PACKET_ID, sha) is None
    assert store.add_chunks([(KIOSK, at(data, sha, 5999, 1))]) == [9000]
    assert store.assemble_partial(KIOSK, PACKET_ID, sha) == data


def test_the_same_offset_again_is_a_no_op_and_a_longer_chunk_there_replaces_it(store: CentralStore) -> None:
    data, sha = packet(4000)
    store.add_chunks([(KIOSK, at(data, sha, 0, 1000))])
    forged = Chunk(PACKET_ID, sha, 4000, 0, b"\xff" * 1000)  # same offset and length, other bytes
    assert store.add_chunks([(KIOSK, forged)]) == [1000]
    shorter = Chunk(PACKET_ID, sha, 4000, 0, b"\xee" * 10)
    assert store.add_chunks([(KIOSK, shorter)]) == [1000]
    assert store.add_chunks([(KIOSK, at(data, sha, 0, 2500))]) == [2500]  # longer: replaces
    assert store.add_chunks([(KIOSK, at(data, sha, 2500, 1500))]) == [4000]
    assert store.assemble_partial(KIOSK, PACKET_ID, sha) == data  # the first 1000 bytes kept, not forged
    assert store.partials()[0]["chunks"] == 2


def test_a_probe_asks_without_keeping_anything(store: CentralStore) -> None:
    data, sha = packet(5000)
    assert store.add_chunks([(KIOSK, probe(PACKET_ID, sha, 5000))]) == [0]
    assert store.partials() == []
    assert store.add_chunks([(KIOSK, at(data, sha, 0, 2000)), (KIOSK, probe(PACKET_ID, sha, 5000))]) == [
        2000,
        2000,
    ]


def test_a_chunk_with_another_total_for_the_same_hash_is_not_kept(store: CentralStore) -> None:
    data, sha = packet(5000)
    store.add_chunks([(KIOSK, at(data, sha, 0, 2000))])
    liar = Chunk(PACKET_ID, sha, 2500, 2000, data[2000:2500])  # claims a 2500-byte packet
    assert store.add_chunks([(KIOSK, liar)]) == [2000]
    assert store.assemble_partial(KIOSK, PACKET_ID, sha) is None
    assert store.add_chunks([(KIOSK, at(data, sha, 2000, 3000))]) == [5000]
    assert store.assemble_partial(KIOSK, PACKET_ID, sha) == data


def test_transfers_are_apart_by_kiosk_packet_id_and_hash(store: CentralStore) -> None:
    data, sha = packet(3000, seed=1)
    other, other_sha = packet(3000, seed=2)
    pid2 = "01890a5d-ac96-774b-bcce-b302099a8058"
    haves = store.add_chunks(
        [
            (KIOSK, at(data, sha, 0, 3000)),
            (PEER, at(other, sha, 0, 1000)),  # another kiosk, the same packet id and hash
            (KIOSK, at(other, other_sha, 0, 2000)),  # the same kiosk and id, other bytes
            (KIOSK, at(data, sha, 0, 500, packet_id=pid2)),
        ]
    )
    assert haves == [3000, 1000, 2000, 500]
    assert store.assemble_partial(KIOSK, PACKET_ID, sha) == data
    assert store.assemble_partial(PEER, PACKET_ID, sha) is None
    listed = store.partials()
    assert [(r["kiosk"], r["packet_id"], r["sha256"], r["have"]) for r in listed] == sorted(
        [
            (KIOSK, PACKET_ID, sha, 3000),
            (KIOSK, PACKET_ID, other_sha, 2000),
            (KIOSK, pid2, sha, 500),
            (PEER, PACKET_ID, sha, 1000),
        ]
    )
    assert [r["packet_id"] for r in store.partials(PEER)] == [PACKET_ID]
    store.drop_partial(KIOSK, PACKET_ID, sha)
    assert store.partial_have(KIOSK, PACKET_ID, sha) == 0
    assert store.partial_have(KIOSK, PACKET_ID, other_sha) == 2000
    assert store.partial_have(PEER, PACKET_ID, sha) == 1000
    store.drop_partial(KIOSK, PACKET_ID, sha)  # again: nothing to drop, no error
    assert len(store.partials()) == 3


def test_expire_drops_transfers_whose_newest_chunk_is_old(
    store: CentralStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    old, old_sha = packet(3000, seed=1)
    mixed, mixed_sha = packet(3000, seed=2)
    fresh, fresh_sha = packet(3000, seed=3)
    real_now = central.store.utc_now
    monkeypatch.setattr(central.store, "utc_now", lambda: "2020-01-01T00:00:00.000Z")
    store.add_chunks([(KIOSK, at(old, old_sha, 0, 1000)), (KIOSK, at(old, old_sha, 1000, 1000))])
    store.add_chunks([(PEER, at(mixed, mixed_sha, 0, 1000))])
    monkeypatch.setattr(central.store, "utc_now", real_now)
    store.add_chunks([(PEER, at(mixed, mixed_sha, 1000, 1000)), (KIOSK, at(fresh, fresh_sha, 0, 1000))])

    listed = {r["sha256"]: r for r in store.partials()}
    assert listed[mixed_sha]["first_received_at"] == "2020-01-01T00:00:00.000Z"
    assert listed[mixed_sha]["last_received_at"] > "2020-01-01T00:00:00.000Z"
    assert listed[old_sha]["chunks"] == 2

    assert store.expire_partials(3600) == 1  # one transfer of two chunks
    assert {r["sha256"] for r in store.partials()} == {mixed_sha, fresh_sha}
    assert store.partial_have(KIOSK, PACKET_ID, old_sha) == 0
    assert store.expire_partials(3600) == 0
    with pytest.raises(StoreInputError):
        store.expire_partials(-1)
    with pytest.raises(StoreInputError):
        store.expire_partials(float("nan"))


@pytest.mark.parametrize(
    "bad",
    [
        (KIOSK, Chunk(PACKET_ID, "ab" * 31, 10, 0, b"x")),  # short hash
        (KIOSK, Chunk(PACKET_ID, "AB" * 32, 10, 0, b"x")),  # upper case: not how hashes are keyed
        (KIOSK, Chunk(PACKET_ID, "ab" * 32, 10, 8, b"xyz")),  # past the total
        (KIOSK, Chunk(PACKET_ID, "ab" * 32, 0, 0, b"")),
        ("not a kiosk!", Chunk(PACKET_ID, "ab" * 32, 10, 0, b"x")),
    ],
)
def test_bad_items_are_refused_and_nothing_of_the_batch_is_kept(
    store: CentralStore, bad: tuple[str, Chunk]
) -> None:
    data, sha = packet(100)
    with pytest.raises(StoreInputError):
        store.add_chunks([(KIOSK, at(data, sha, 0, 50)), bad])
    assert store.partials() == []
    assert store.add_chunks([]) == []


def test_the_prefix_is_computed_from_spans_not_from_chunk_data(
    store: CentralStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """add_chunks and partial_have never read chunk data back: memory does not grow with the packet."""
    data, sha = packet(64 * 1024)
    queries: list[str] = []
    real = store._tx

    from contextlib import contextmanager

    @contextmanager
    def spying(*, write: bool = True):  # type: ignore[no-untyped-def]
        with real(write=write) as sql:

            def spy(text: str, params=()):  # type: ignore[no-untyped-def]
                queries.append(text)
                return sql(text, params)

            yield spy

    monkeypatch.setattr(store, "_tx", spying)
    chunks = [(KIOSK, at(data, sha, offset, 4096)) for offset in range(0, len(data), 4096)]
    assert store.add_chunks(chunks)[-1] == len(data)
    assert store.partial_have(KIOSK, PACKET_ID, sha) == len(data)
    reads = [q for q in queries if q.lstrip().upper().startswith("SELECT")]
    assert reads and not [q for q in reads if "data" in q.split("FROM")[0]]
    assert store.assemble_partial(KIOSK, PACKET_ID, sha) == data
