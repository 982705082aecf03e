"""An invoice's PDF: the time ``billing.render.pdf`` (weasyprint) takes to print one.

    .venv/bin/python -m loadtests.pdf_bench [--renders 20] [--lines 5 50]

Builds open invoices in memory, one for each ``--lines`` (that many usage lines, a
fee and the credits applied, a buyer with an address and a tax id), and renders each
``--renders`` times after one warm-up, one at a time in this process, as the PDF
routes and the invoice email do. The first render of the run is timed apart ("cold"):
it imports weasyprint, which loads Pango and its fonts. Reported: median, min and max
ms a PDF, the CPU ms of this process a PDF, and the PDF's bytes. Checked: the text
pypdf reads back from every invoice's PDF holds its number and its amount due.
Writes ``loadtests/results/pdf-latest.json`` and ``.md``; exits 1 when a check fails.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import io
import statistics
import sys
import time
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import pypdf

from billing import render
from billing.invoices import Invoice, Line, usage_description
from billing.periods import Period
from meter.money import MICROS_PER_CENT, money

from . import provenance
from .latest import finish

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "loadtests" / "results"
USD = 1_000_000
CREDIT = 25 * USD


def invoice(lines: int) -> Invoice:
    """An open invoice of ``lines`` usage lines and a fee, part of the usage covered by
    prepaid credits, the overage beyond them due in whole cents (as a close makes it)."""
    routes = [(i, f"route-{i:03d}", 7 * i) for i in range(1, lines + 1)]
    usage = [
        Line(i, "usage", usage_description(route, calls), route, calls, calls * 3_125)
        for i, route, calls in routes
    ]
    used = sum(x.amount for x in usage)
    overage = max(0, used - CREDIT) // MICROS_PER_CENT * MICROS_PER_CENT
    fee = Line(lines + 1, "fee", "Team plan, 1 Jan 2027 to 31 Jan 2027", None, None, 20 * USD)
    applied = Line(
        lines + 2, "credits_applied", "Applied credit balance", None, None, overage - used
    )
    return Invoice(
        id=f"inv_pdfbench{lines:03d}",
        account_id="acct_pdfbench",
        period=Period(date(2026, 12, 1), date(2027, 1, 1)),
        status="open",
        number=f"INV-{lines:06d}",
        currency="usd",
        usage_amount=used,
        fee_amount=fee.amount,
        credits_applied=used - overage,
        amount_due=overage + fee.amount,
        amount_paid=0,
        balance_at_end=-overage,
        seller={"name": "Meter Ltd", "address": ["1 Main Street", "London EC1A 1AA", "GB"]},
        buyer={
            "name": "Acme Widgets & Co",
            "email": "billing@acme.example",
            "address": ["2 Side Road", "75001 Paris", "FR"],
            "po_number": "PO-4471",
            "tax_ids": [{"type": "eu_vat", "country": "FR", "value": "FR12345678901"}],
        },
        created_at=datetime(2027, 1, 1, tzinfo=UTC),
        finalize_after=datetime(2027, 1, 1, 1, tzinfo=UTC),
        finalized_at=datetime(2027, 1, 1, 1, tzinfo=UTC),
        due_at=datetime(2027, 1, 15, 1, tzinfo=UTC),
        paid_at=None,
        lines=(*usage, fee, applied),
    )


def timed(inv: Invoice) -> tuple[bytes, float, float]:
    """(the PDF, wall ms, CPU ms of this process)."""
    cpu, t = time.process_time(), time.perf_counter()
    pdf = render.pdf(inv)
    return pdf, (time.perf_counter() - t) * 1000, (time.process_time() - cpu) * 1000


def text_of(pdf: bytes) -> str:
    reader = pypdf.PdfReader(io.BytesIO(pdf))
    return "\n".join(page.extract_text() for page in reader.pages)


def check(inv: Invoice, pdf: bytes) -> dict[str, Any]:
    text = text_of(pdf)
    return {
        "number": inv.number,
        "amount_due": money(inv.amount_due),
        "pages": len(pypdf.PdfReader(io.BytesIO(pdf)).pages),
        "number_found": inv.number is not None and inv.number in text,
        "amount_due_found": money(inv.amount_due) in text,
    }


def run(a: argparse.Namespace) -> dict[str, Any]:
    load = Path("/proc/loadavg").read_text().split()[:3]
    invoices = [invoice(n) for n in a.lines]
    imported = "weasyprint" in sys.modules
    first_pdf, cold_ms, cold_cpu_ms = timed(invoices[0])
    sizes = []
    for inv in invoices:
        pdf, _, _ = timed(inv)  # warm-up
        walls, cpus = [], []
        for _ in range(a.renders):
            pdf, wall, cpu = timed(inv)
            walls.append(wall)
            cpus.append(cpu)
        sizes.append(
            {
                "lines": len(inv.lines),
                "usage_lines": sum(1 for x in inv.lines if x.kind == "usage"),
                "renders": a.renders,
                "ms": {
                    "median": statistics.median(walls),
                    "min": min(walls),
                    "max": max(walls),
                },
                "cpu_ms_median": statistics.median(cpus),
                "pdf_bytes": len(pdf),
                "check": check(inv, pdf),
            }
        )
    checks = [s["check"] for s in sizes] + [check(invoices[0], first_pdf)]
    where = provenance.where()
    return {
        "args": {k: v for k, v in vars(a).items() if k != "results_dir"},
        "cold": {
            "ms": cold_ms,
            "cpu_ms": cold_cpu_ms,
            "weasyprint_imported_before": imported,
            "usage_lines": a.lines[0],
        },
        "sizes": sizes,
        "checks": {
            "ok": all(c["number_found"] and c["amount_due_found"] for c in checks),
            "invoices": checks,
        },
        "loadavg_before": load,
        "where": {**where, "versions": {**where["versions"], **_versions()}},
    }


def _versions() -> dict[str, str]:
    out = {}
    for pkg in ("weasyprint", "pydyf", "tinycss2", "pypdf", "jinja2"):
        try:
            out[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            out[pkg] = "missing"
    return out


def markdown(result: dict[str, Any]) -> str:
    a, cold = result["args"], result["cold"]
    lines = [
        f"# PDF bench, {result['where']['date']}",
        "",
        f"`python -m loadtests.pdf_bench --renders {a['renders']}"
        f" --lines {' '.join(map(str, a['lines']))}`: `billing.render.pdf`, weasyprint"
        f" {result['where']['versions']['weasyprint']}, one render at a time after a warm-up;"
        f" load average before: {' '.join(result['loadavg_before'])}.",
        "",
        "| usage lines | renders | ms a PDF, median | min | max | CPU ms, median | PDF bytes"
        " | pages |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for s in result["sizes"]:
        ms = s["ms"]
        lines.append(
            f"| {s['usage_lines']} | {s['renders']} | {ms['median']:.1f} | {ms['min']:.1f}"
            f" | {ms['max']:.1f} | {s['cpu_ms_median']:.1f} | {s['pdf_bytes']:,}"
            f" | {s['check']['pages']} |"
        )
    lines += [
        "",
        f"First render of the run, cold ({cold['usage_lines']} usage lines, weasyprint"
        f" imported in it: {not cold['weasyprint_imported_before']}): {cold['ms']:.0f} ms"
        f" ({cold['cpu_ms']:.0f} ms CPU).",
        "",
        "Checked with pypdf: every PDF's text holds its number and amount due:"
        f" {result['checks']['ok']}.",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m loadtests.pdf_bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--renders", type=int, default=20, help="timed renders of each invoice")
    p.add_argument("--lines", type=int, nargs="+", default=[5, 50], help="usage lines")
    p.add_argument("--results-dir", type=Path, default=RESULTS)
    a = p.parse_args(argv)
    result = run(a)
    return finish(a.results_dir, "pdf", result, markdown(result), result["checks"]["ok"])


if __name__ == "__main__":
    sys.exit(main())
