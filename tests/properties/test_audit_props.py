"""Any change to a segment file is found by verification, at the right sequence number.

One trail of 40 events over several segments is written once; each example copies it,
damages the copy (flip a byte, delete, reorder or duplicate a record) and checks that
``verify_dir`` raises AuditIntegrityError naming the first affected event. Damage to the
last record also keeps the store from reopening over it, and an inclusion proof whose
event was changed in any field does not verify.
"""

from __future__ import annotations

import shutil
import struct
import tempfile
from collections.abc import Iterator
from pathlib import Path

import anyio
import msgspec
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from symbi.audit import AuditLog, InclusionProof, verify_dir, verify_inclusion
from symbi.errors import AuditIntegrityError, InvalidArgument

N = 40


async def _write(path: Path) -> None:
    async with AuditLog(path, segment_bytes=4096, checkpoint_every=16) as log:
        for i in range(N):
            await log.append(f"agent-{i % 4}", "prop.test", {"i": i, "pad": "x" * (i * 7 % 90)})


@pytest.fixture(scope="module")
def trail() -> Iterator[Path]:
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "trail"
        anyio.run(_write, p)
        yield p


def segments(path: Path) -> list[Path]:
    return sorted(path.glob("*.seg"))


def records(path: Path) -> list[bytes]:
    """Every framed record (header included), in log order."""
    out = []
    for seg in segments(path):
        buf = seg.read_bytes()
        pos = 0
        while pos < len(buf):
            (n,) = struct.unpack_from("<I", buf, pos)
            out.append(buf[pos : pos + 8 + n])
            pos += 8 + n
    return out


def rewrite(path: Path, recs: list[bytes]) -> None:
    """Write `recs` back over the same segment files (same record count per file where
    possible, the rest into the last)."""
    segs = segments(path)
    counts = []
    for seg in segs:
        buf, pos, c = seg.read_bytes(), 0, 0
        while pos < len(buf):
            (n,) = struct.unpack_from("<I", buf, pos)
            pos += 8 + n
            c += 1
        counts.append(c)
    i = 0
    for k, seg in enumerate(segs):
        take = counts[k] if k < len(segs) - 1 else len(recs)
        seg.write_bytes(b"".join(recs[i : i + take]))
        i += take


def check(path: Path, seq: int, kinds: tuple[str, ...]) -> None:
    with pytest.raises(AuditIntegrityError) as e:
        verify_dir(path)
    assert e.value.sequence == seq, (e.value.kind, str(e.value))
    assert e.value.kind in kinds


SETTINGS = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@pytest.fixture
def copy(trail: Path) -> Iterator[Path]:
    with tempfile.TemporaryDirectory() as d:
        yield Path(d)


def fresh(trail: Path, base: Path) -> Path:
    dst = base / "t"
    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(trail, dst)
    return dst


def test_intact_trail_verifies(trail: Path) -> None:
    assert verify_dir(trail).events == N
    assert len(segments(trail)) >= 3
    assert len(records(trail)) == N


@SETTINGS
@given(data=st.data())
def test_flipping_any_byte_is_detected(trail: Path, copy: Path, data: st.DataObject) -> None:
    t = fresh(trail, copy)
    segs = segments(t)
    seg_i = data.draw(st.integers(0, len(segs) - 1), label="segment")
    buf = bytearray(segs[seg_i].read_bytes())
    off = data.draw(st.integers(0, len(buf) - 1), label="offset")
    bit = data.draw(st.integers(0, 7), label="bit")
    # Which event holds that byte?
    first = sum(len(records_in(s)) for s in segs[:seg_i])
    pos, k = 0, 0
    while True:
        (n,) = struct.unpack_from("<I", buf, pos)
        if off < pos + 8 + n:
            break
        pos += 8 + n
        k += 1
    buf[off] ^= 1 << bit
    segs[seg_i].write_bytes(bytes(buf))
    check(t, first + k, ("corrupt",))


def records_in(seg: Path) -> list[int]:
    buf, pos, out = seg.read_bytes(), 0, []
    while pos < len(buf):
        (n,) = struct.unpack_from("<I", buf, pos)
        out.append(pos)
        pos += 8 + n
    return out


@SETTINGS
@given(k=st.integers(0, N - 1))
def test_deleting_any_record_is_detected(trail: Path, copy: Path, k: int) -> None:
    t = fresh(trail, copy)
    recs = records(t)
    del recs[k]
    rewrite(t, recs)
    check(t, k, ("missing",))


@SETTINGS
@given(i=st.integers(0, N - 1), j=st.integers(0, N - 1))
def test_reordering_any_records_is_detected(trail: Path, copy: Path, i: int, j: int) -> None:
    if i == j:
        return
    i, j = min(i, j), max(i, j)
    t = fresh(trail, copy)
    recs = records(t)
    recs[i], recs[j] = recs[j], recs[i]
    rewrite(t, recs)
    check(t, i, ("order",))


@SETTINGS
@given(k=st.integers(0, N - 1), p=st.integers(0, N))
def test_duplicating_any_record_is_detected(trail: Path, copy: Path, k: int, p: int) -> None:
    t = fresh(trail, copy)
    recs = records(t)
    recs.insert(p, recs[k])
    rewrite(t, recs)
    check(t, p + 1 if p == k else p, ("order",))


def snapshot(path: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(path.iterdir())}


@SETTINGS
@given(data=st.data())
def test_damaged_last_record_is_never_cut_or_appended_over(
    trail: Path, copy: Path, data: st.DataObject
) -> None:
    t = fresh(trail, copy)
    seg = segments(t)[-1]
    buf = bytearray(seg.read_bytes())
    start = records_in(seg)[-1]
    off = data.draw(st.integers(start, len(buf) - 1), label="offset")
    buf[off] ^= 1 << data.draw(st.integers(0, 7), label="bit")
    seg.write_bytes(bytes(buf))
    before = snapshot(t)
    with pytest.raises(AuditIntegrityError) as e:
        AuditLog(t).query(limit=0)  # opens the store for appending
    # A bad CRC is corruption; a length that now runs past the end looks torn, but the
    # closing checkpoint covers the event, so it is missing.
    assert (e.value.kind, e.value.sequence) in {("corrupt", N - 1), ("missing", N - 1)}
    assert snapshot(t) == before


async def _proof() -> tuple[InclusionProof, bytes]:
    async with AuditLog(None, checkpoint_every=4) as log:
        for i in range(9):
            await log.append(f"agent-{i}", "data.read", {"rows": i, "ok": True})
        return log.prove(5), log.public_key


@pytest.fixture(scope="module")
def proof() -> tuple[InclusionProof, bytes]:
    return anyio.run(_proof)


def same(a: object, b: object) -> bool:
    """Equal in type and in the JSON that would be signed (1 == True, but not here)."""
    enc = msgspec.json.Encoder(order="sorted").encode
    return type(a) is type(b) and enc(a) == enc(b)


EVENT_FIELDS = {
    "agent_id": st.text(min_size=1),
    "event_type": st.text(min_size=1),
    "details": st.dictionaries(
        st.text(), st.integers() | st.booleans() | st.floats(0, 9) | st.sampled_from([1, True])
    ),
    "sequence": st.integers(0, 2**64 - 1),
    "timestamp": st.integers(-(2**63), 2**63 - 1),
    "event_id": st.uuids().map(str),
    "key_id": st.text(),
}


@settings(max_examples=150, deadline=None)
@given(data=st.data(), field=st.sampled_from(sorted(EVENT_FIELDS)))
def test_proof_with_any_event_field_changed_is_rejected(
    proof: tuple[InclusionProof, bytes], data: st.DataObject, field: str
) -> None:
    p, key = proof
    verify_inclusion(p, p.checkpoint, key)
    value = data.draw(EVENT_FIELDS[field], label=field)
    # Equal-looking values of another type (True for 1, 5.0 for 5) are changes too.
    assume(not same(value, getattr(p.event, field)))
    forged = msgspec.structs.replace(p, event=msgspec.structs.replace(p.event, **{field: value}))
    with pytest.raises(AuditIntegrityError) as e:
        verify_inclusion(forged, forged.checkpoint, key)
    assert (e.value.kind, e.value.sequence) == ("link", 5)


@pytest.mark.parametrize("key", ["not bytes", None, 32])
def test_proof_with_a_public_key_of_the_wrong_type_is_invalid(
    proof: tuple[InclusionProof, bytes], key: object
) -> None:
    p, _ = proof
    with pytest.raises(InvalidArgument):
        verify_inclusion(p, p.checkpoint, key)  # type: ignore[arg-type]
