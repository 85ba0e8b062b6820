"""Any change to a segment file is found by verification, at the right sequence number.

One trail of 40 events over several segments is written once; each example copies it,
damages the copy (flip a byte, delete, reorder or duplicate a record) and checks that
``verify_dir`` raises AuditIntegrityError naming the first affected event.
"""

from __future__ import annotations

import shutil
import struct
import tempfile
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from symbi.audit import AuditLog, verify_dir
from symbi.errors import AuditIntegrityError

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
