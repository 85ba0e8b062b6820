from __future__ import annotations

import pytest

from symbi.cli.bench import collect_rows


def bench(role: str, median: float, **info: object) -> dict[str, object]:
    return {"stats": {"median": median}, "extra_info": {"role": role, **info}}


def test_rate_rows_are_items_over_median_and_ratio_is_symbi_over_peer():
    report = {
        "benchmarks": [
            bench("symbi", 0.5, metric="m", unit="ops/s", items=1000),
            bench("peer", 2.0, metric="m", unit="ops/s", items=1000, peer="p"),
        ]
    }
    (row,) = collect_rows(report)
    assert row.symbi == pytest.approx(2000) and row.peer_value == pytest.approx(500)
    assert row.peer == "p" and row.ratio == pytest.approx(4.0)


def test_lower_is_better_rows_invert_the_ratio():
    report = {
        "benchmarks": [
            bench(
                "peer", 0, metric="bytes per agent", unit="B", value=4000, better="lower", peer="p"
            ),
            bench("symbi", 0, metric="bytes per agent", unit="B", value=1000, better="lower"),
        ]
    }
    (row,) = collect_rows(report)
    assert row.symbi == 1000 and row.peer_value == 4000 and row.ratio == pytest.approx(4.0)


def test_a_row_without_peer_has_no_ratio_and_untagged_benches_are_ignored():
    report = {
        "benchmarks": [
            bench("symbi", 1.0, metric="solo", unit="s"),
            {"stats": {"median": 1}, "extra_info": {}},
        ]
    }
    (row,) = collect_rows(report)
    assert row.peer is None and row.ratio is None and row.symbi == 1.0
