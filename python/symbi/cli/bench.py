"""``symbi bench``: run benches/ (pytest-benchmark) and report symbi against its peers.

Each benchmark tags itself through ``benchmark.extra_info``::

    metric   what is measured, shared by the symbi run and its peer run
    role     "symbi" or "peer"
    peer     the peer's name (on the peer run)
    unit     e.g. "events/s"; a unit ending in "/s" is items / median round time
    items    operations per round, for "/s" units
    value    an explicit measurement, for units that are not rates (bytes, recall)
    better   "higher" (default for rates) or "lower"
    seed_target, goal   what the seed asks for and what we aim at (text)

Rows pair the two runs of a metric. ``ratio`` is oriented so that higher is better for
symbi: symbi/peer for higher-is-better units, peer/symbi otherwise.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Optional

import msgspec

from symbi.errors import InvalidArgument

__all__ = ["BenchRow", "collect_rows", "run_bench"]


class BenchRow(msgspec.Struct, kw_only=True):
    metric: str
    unit: str
    symbi: Optional[float]
    peer: Optional[str]
    peer_value: Optional[float]
    ratio: Optional[float]
    seed_target: Optional[str] = None
    goal: Optional[str] = None


def _find_benches(explicit: Optional[str]) -> Path:
    candidates = [Path(explicit)] if explicit else [Path.cwd() / "benches"]
    for c in candidates:
        if c.is_dir() and any(c.glob("bench_*.py")):
            return c.resolve()
    where = explicit or str(Path.cwd() / "benches")
    raise InvalidArgument(
        f"no benchmark suites (bench_*.py) in {where}; run from a symbi source checkout "
        "or pass --dir DIR",
        argument="--dir",
        expected="a directory with bench_*.py files",
        got=where,
    )


def _value(bench: dict[str, Any]) -> float:
    info = bench["extra_info"]
    if "value" in info:
        return float(info["value"])
    median = float(bench["stats"]["median"])
    if str(info.get("unit", "")).endswith("/s"):
        return float(info.get("items", 1)) / median
    return median


def collect_rows(report: dict[str, Any]) -> list[BenchRow]:
    """Pair the symbi and peer measurements of each metric in a pytest-benchmark report."""
    by_metric: dict[str, dict[str, dict[str, Any]]] = {}
    order: list[str] = []
    for bench in report.get("benchmarks", []):
        info = bench.get("extra_info", {})
        metric, role = info.get("metric"), info.get("role")
        if not metric or role not in ("symbi", "peer"):
            continue
        if metric not in by_metric:
            by_metric[metric] = {}
            order.append(metric)
        by_metric[metric][role] = bench
    rows = []
    for metric in order:
        pair = by_metric[metric]
        s, p = pair.get("symbi"), pair.get("peer")
        meta = (s or p or {}).get("extra_info", {})
        unit = str(meta.get("unit", "s"))
        better = meta.get("better", "higher" if unit.endswith("/s") else "lower")
        sv = _value(s) if s else None
        pv = _value(p) if p else None
        ratio = None
        if sv is not None and pv is not None and sv > 0 and pv > 0:
            ratio = sv / pv if better == "higher" else pv / sv
        rows.append(
            BenchRow(
                metric=metric,
                unit=unit,
                symbi=sv,
                peer=(p or {}).get("extra_info", {}).get("peer") if p else None,
                peer_value=pv,
                ratio=ratio,
                seed_target=meta.get("seed_target"),
                goal=meta.get("goal"),
            )
        )
    return rows


def _fmt(v: Optional[float]) -> str:
    if v is None:
        return "-"
    if v == 0 or 0.01 <= abs(v) < 1e6:
        return f"{v:,.2f}"
    return f"{v:.3g}"


def _print_table(rows: list[BenchRow]) -> None:
    header = ("metric", "unit", "symbi", "peer", "peer value", "ratio")
    body = [
        (
            r.metric,
            r.unit,
            _fmt(r.symbi),
            r.peer or "-",
            _fmt(r.peer_value),
            f"{r.ratio:.2f}x" if r.ratio is not None else "-",
        )
        for r in rows
    ]
    widths = [max(len(str(x)) for x in col) for col in zip(header, *body)]
    for line in (header, *body):
        print("  ".join(str(x).ljust(w) for x, w in zip(line, widths)))


def criterion_rows(criterion_dir: Path) -> list[BenchRow]:
    """Rows from criterion's ``new/estimates.json`` files (Rust micro-benches). They have
    no peer: Rust-side peers are compared in the Python suites, on the same data."""
    rows = []
    for est in sorted(criterion_dir.glob("**/new/estimates.json")):
        bench_id = est.parent.parent.relative_to(criterion_dir).as_posix()
        if bench_id.startswith("report"):
            continue
        ns = float(json.loads(est.read_text())["median"]["point_estimate"])
        rows.append(
            BenchRow(
                metric=f"criterion {bench_id}",
                unit="ns/iter",
                symbi=ns,
                peer=None,
                peer_value=None,
                ratio=None,
            )
        )
    return rows


def _run_criterion(root: Path, quick: bool) -> list[BenchRow]:
    manifest = root.parent / "Cargo.toml"
    if not manifest.exists():
        raise InvalidArgument(
            f"--rust needs the source checkout's Cargo.toml next to {root}",
            argument="--rust",
            expected="a source checkout with cargo installed",
        )
    target = root.parent / "target"
    cmd = ["cargo", "bench", "--locked", "--benches", "--manifest-path", str(manifest), "--"]
    if quick:
        cmd += ["--warm-up-time", "0.2", "--measurement-time", "0.5", "--sample-size", "10"]
    try:
        proc = subprocess.run(cmd, check=False)
    except FileNotFoundError:
        raise InvalidArgument(
            "--rust needs cargo on PATH (https://rustup.rs)",
            argument="--rust",
            expected="cargo installed",
        ) from None
    if proc.returncode != 0:
        return []
    return criterion_rows(target / "criterion")


def run_bench(
    *,
    quick: bool = False,
    only: Optional[str] = None,
    json_out: Optional[str] = None,
    benches_dir: Optional[str] = None,
    rust: bool = False,
) -> int:
    try:
        import pytest_benchmark  # noqa: F401
    except ImportError:
        raise InvalidArgument(
            "symbi bench needs pytest-benchmark; install it with: pip install 'symbi[test]'",
            argument="bench",
            expected="pytest-benchmark installed",
        ) from None
    root = _find_benches(benches_dir)
    areas = sorted(p.stem[len("bench_") :] for p in root.glob("bench_*.py"))
    if only is not None and only not in areas:
        raise InvalidArgument(
            f"no bench area {only!r}; the areas are {areas}",
            argument="--only",
            expected=f"one of {areas}",
            got=only,
        )
    if json_out is not None and not Path(json_out).resolve().parent.is_dir():
        raise InvalidArgument(
            f"cannot write --json {json_out!r}: its directory does not exist; create it "
            "or pick another path",
            argument="--json",
            expected="a file path in an existing directory",
            got=json_out,
        )
    targets = [str(root / f"bench_{only}.py")] if only else [str(root)]
    with tempfile.TemporaryDirectory() as tmp:
        report_path = Path(tmp) / "report.json"
        cmd = [
            sys.executable,
            "-m",
            "pytest",
            *targets,
            "-q",
            "-p",
            "no:cacheprovider",
            "--benchmark-only",
            f"--benchmark-json={report_path}",
            "-o",
            "addopts=",
            "-o",
            "python_files=bench_*.py",
            "-o",
            "python_functions=test_* bench_*",
            "--rootdir",
            str(root),
        ]
        if quick:
            cmd += [
                "--benchmark-min-rounds=3",
                "--benchmark-max-time=0.2",
                "--benchmark-warmup=off",
            ]
        env = dict(os.environ, SYMBI_BENCH_QUICK="1" if quick else "0")
        proc = subprocess.run(cmd, env=env, check=False)
        if proc.returncode != 0 or not report_path.exists():
            print(
                f"symbi bench: the benchmark run failed (pytest exit {proc.returncode})",
                file=sys.stderr,
            )
            return 1
        report = json.loads(report_path.read_text())
    rows = collect_rows(report)
    if rust:
        crit = _run_criterion(root, quick)
        if not crit:
            print("symbi bench: the criterion run failed", file=sys.stderr)
            return 1
        rows += crit
    if not rows:
        print("symbi bench: the run produced no rows", file=sys.stderr)
        return 1
    print()
    _print_table(rows)
    if json_out:
        try:
            Path(json_out).write_bytes(
                msgspec.json.format(msgspec.json.encode(rows), indent=2) + b"\n"
            )
        except OSError as e:
            raise InvalidArgument(
                f"cannot write --json {json_out!r}: {e.strerror or e}; the table above "
                "has the results",
                argument="--json",
                expected="a writable file path",
                got=json_out,
            ) from None
        print(f"\nwrote {len(rows)} rows to {json_out}")
    return 0
