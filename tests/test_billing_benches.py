"""The invoice benchmarks at a tiny scale, so that they stay working: the period close
(which starts its own Redis and PostgreSQL) and the PDF render. Figures are not judged,
only that the checks held and the numbers are sane."""

from __future__ import annotations

import sys
from pathlib import Path

import orjson

# loadtests/ is run from the checkout (`python -m loadtests.close_bench`), not installed.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from loadtests import close_bench, close_seed, pdf_bench


def test_every_seeded_kind_of_account_is_there_and_expected_in_whole_cents() -> None:
    accounts = close_seed.plan(300, seed=27)
    kinds = {a.kind for a in accounts}
    assert kinds == {close_seed.NONE, close_seed.COVERED, close_seed.OVERAGE}
    assert any(a.plan for a in accounts) and any(a.later_credit for a in accounts)
    for a in accounts:
        usage, fee, due = close_seed.expected(a)
        assert due % 10_000 == 0 and fee <= due <= usage + fee
        assert (due > fee) == (a.used - a.credit >= 10_000)


def test_the_close_bench_closes_and_numbers_every_account(tmp_path: Path) -> None:
    args = ["--accounts", "300", "--workers", "1", "2", "--results-dir", str(tmp_path)]
    assert close_bench.main(args) == 0
    result = orjson.loads((tmp_path / "close-latest.json").read_bytes())
    assert result["checks"]["ok"]
    assert [r["workers"] for r in result["runs"]] == [1, 2]
    for r in result["runs"]:
        c = r["checks"]
        assert c["ok"] and c["invoices"] == c["last_number"] == 300 and c["with_overage"] > 0
        for phase in close_bench.PHASES:
            x = r["phases"][phase]
            assert 0 < x["seconds"] < 60 and x["ms_per_account"] > 0
            assert len(x["counts"]) == r["workers"]
        assert sum(r["phases"]["finalize"]["counts"]) == 300
    assert "| 2 | close |" in (tmp_path / "close-latest.md").read_text()


def test_the_pdf_bench_renders_and_reads_back_each_size(tmp_path: Path) -> None:
    assert pdf_bench.main(["--renders", "2", "--results-dir", str(tmp_path)]) == 0
    result = orjson.loads((tmp_path / "pdf-latest.json").read_bytes())
    assert result["checks"]["ok"]
    assert [s["usage_lines"] for s in result["sizes"]] == [5, 50]
    for s in result["sizes"]:
        assert 0 < s["ms"]["min"] <= s["ms"]["median"] <= s["ms"]["max"]
        assert s["pdf_bytes"] > 1_000 and s["check"]["number_found"]
    assert result["sizes"][1]["pdf_bytes"] > result["sizes"][0]["pdf_bytes"]
    assert result["cold"]["ms"] > 0
    assert "| 50 |" in (tmp_path / "pdf-latest.md").read_text()
