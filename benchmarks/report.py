"""The benchmark's record: one JSON file per GPU and configuration, the table printed at the end
of a run, and a markdown table for the README built from committed JSON files.

Pure Python (no torch). The JSON schema is DESIGN.md section 6; benchmarks/README.md lists it.

    python3 -m benchmarks.report benchmarks/results/*.json    # markdown table, every result
    python3 -m benchmarks.report --readme benchmarks/results/*.json  # the README's summary table
    python3 -m benchmarks.report --table FILE.json             # the run's plain table again
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import statistics
import sys

from benchmarks.configs import LINEAR, MoeConfig

SCHEMA_VERSION = 1
TOP_KEYS = ("gpu", "driver", "torch", "cuda", "commit", "timestamp", "config", "ceilings", "results")
CEILING_KEYS = ("copy_gbps", "bf16_tflops", "fp8_tflops")
TIMED_KEYS = (
    "impl", "precision", "samples_ms", "median_ms", "min_ms", "max_ms", "tokens_per_s",
    "weight_gbps", "weight_bw_fraction", "tflops", "tflops_fraction", "rel_err",
    "kernels_per_call",
)
MAX_REASON = 600  # characters of an error or skip reason kept in the JSON
SPEEDUP_BASELINE = "torch-eager"  # the table's speedup column is relative to this one


def gpu_slug(gpu_name: str) -> str:
    """'NVIDIA H100 80GB HBM3' -> 'nvidia-h100-80gb-hbm3' (for file names)."""
    slug = re.sub(r"[^a-z0-9]+", "-", gpu_name.lower()).strip("-")
    return slug or "unknown-gpu"


def record_filename(config_name: str, tokens: int, gpu_name: str) -> str:
    """`<config>_<T>_<gpu-slug>.json`."""
    return f"{config_name}_{tokens}_{gpu_slug(gpu_name)}.json"


def finite_or_none(x):
    """JSON has no NaN or infinity: such values are stored as null."""
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else None


def _fraction(value, ceiling):
    if value is None or not ceiling:
        return None
    return value / ceiling


def result_entry(impl: str, precision: str, samples_ms: list, cfg: MoeConfig, ceilings: dict,
                 experts_touched: float, rel_err=None, kernels_per_call=None, **extra) -> dict:
    """One timed implementation: the raw samples and the rates derived from their median.

    tokens_per_s = T / median; weight_gbps = bytes of the touched experts' weights / median;
    tflops = cfg.flops() / median; each fraction is of the ceiling of the same run
    (weight_gbps of copy_gbps; tflops of bf16_tflops or fp8_tflops by precision).
    """
    if not samples_ms:
        raise ValueError("samples_ms is empty")
    median_ms = statistics.median(samples_ms)
    seconds = median_ms / 1e3
    weight_gbps = cfg.weight_bytes(experts_touched, precision) / seconds / 1e9
    tflops = cfg.flops() / seconds / 1e12
    entry = {
        "impl": impl,
        "precision": precision,
        "samples_ms": [float(s) for s in samples_ms],
        "median_ms": median_ms,
        "min_ms": min(samples_ms),
        "max_ms": max(samples_ms),
        "tokens_per_s": cfg.T / seconds,
        "weight_gbps": weight_gbps,
        "weight_bw_fraction": _fraction(weight_gbps, ceilings.get("copy_gbps")),
        "tflops": tflops,
        "tflops_fraction": _fraction(tflops, ceilings.get(f"{precision}_tflops")),
        "rel_err": finite_or_none(rel_err),
        "kernels_per_call": kernels_per_call,
    }
    entry.update({k: v for k, v in extra.items() if v is not None})
    return entry


def failed_entry(impl: str, precision: str, *, error: str | None = None,
                 skipped: str | None = None, **extra) -> dict:
    """An implementation that did not run: `skipped` (not available here, with the reason) or
    `error` (it ran and failed)."""
    if (error is None) == (skipped is None):
        raise ValueError("give exactly one of error= or skipped=")
    entry = {"impl": impl, "precision": precision}
    reason = error if error is not None else skipped
    if len(reason) > MAX_REASON:  # some messages list every dispatch key
        reason = reason[:MAX_REASON] + " [...]"
    entry["error" if error is not None else "skipped"] = reason
    entry.update({k: v for k, v in extra.items() if v is not None})
    return entry


def make_record(env: dict, ceilings: dict, cfg: MoeConfig, results: list, **extra) -> dict:
    """The whole JSON object of one GPU and configuration."""
    record = {k: env.get(k) for k in TOP_KEYS[:6]}
    record["schema_version"] = SCHEMA_VERSION
    record["config"] = cfg.as_json()
    record["ceilings"] = {k: ceilings.get(k) for k in CEILING_KEYS}
    record.update(extra)
    record["results"] = list(results)
    return record


def validate_record(record: dict) -> list:
    """Problems with a record against the schema; empty when it conforms."""
    problems = [f"missing key {k!r}" for k in TOP_KEYS if k not in record]
    cfg = record.get("config", {})
    for k in ("name", "T", "E", "H", "top_k", "kind"):
        if k not in cfg:
            problems.append(f"config lacks {k!r}")
    width = "D" if cfg.get("kind") == LINEAR else "I"
    if width not in cfg or ("D" in cfg and "I" in cfg):
        problems.append("config needs 'D' for linear experts or 'I' for ffn experts, not both")
    for k in CEILING_KEYS:
        if k not in record.get("ceilings", {}):
            problems.append(f"ceilings lacks {k!r}")
    for i, r in enumerate(record.get("results", [])):
        name = r.get("impl", f"results[{i}]")
        if "impl" not in r or "precision" not in r:
            problems.append(f"results[{i}] lacks impl or precision")
        if "error" in r or "skipped" in r:
            continue
        for k in TIMED_KEYS:
            if k not in r:
                problems.append(f"{name} lacks {k!r}")
        samples = r.get("samples_ms") or []
        if not samples:
            problems.append(f"{name} has no samples")
        elif r.get("median_ms") != statistics.median(samples):
            problems.append(f"{name}: median_ms is not the median of samples_ms")
    return problems


def write_record(out_dir: str, record: dict) -> str:
    """Writes `<out_dir>/<config>_<T>_<gpu-slug>.json` after checking the schema; returns the path."""
    problems = validate_record(record)
    if problems:
        raise ValueError("benchmark record does not match the schema: " + "; ".join(problems))
    os.makedirs(out_dir, exist_ok=True)
    cfg = record["config"]
    path = os.path.join(out_dir, record_filename(cfg["name"], cfg["T"], record["gpu"]))
    with open(path, "w") as f:
        json.dump(record, f, indent=1, allow_nan=False)
        f.write("\n")
    return path


def load_records(paths) -> list:
    records = []
    for p in paths:
        with open(p) as f:
            records.append(json.load(f))
    return records


# ---------------------------------------------------------------- formatting


def _num(x, spec: str, empty: str = "-") -> str:
    return empty if x is None else format(x, spec)


def _pct(x) -> str:
    return "-" if x is None else f"{100 * x:.0f}%"


def _shape(cfg: dict) -> str:
    width = f"D={cfg['D']}" if "D" in cfg else f"I={cfg['I']}"
    return f"T={cfg['T']} E={cfg['E']} H={cfg['H']} {width} k={cfg['top_k']} {cfg['kind']}"


def _speedups(results: list) -> dict:
    base = next((r for r in results if r.get("impl") == SPEEDUP_BASELINE and "median_ms" in r), None)
    if base is None:
        return {}
    return {r["impl"]: base["median_ms"] / r["median_ms"] for r in results if "median_ms" in r}


def _status(r: dict) -> str:
    if "error" in r:
        return "error: " + r["error"].splitlines()[0][:100]
    if "skipped" in r:
        return "skipped: " + r["skipped"].splitlines()[0][:100]
    notes = []
    if r.get("path"):
        notes.append(f"path={r['path']}")
    if r.get("rel_err_error"):
        notes.append("rel_err failed: " + r["rel_err_error"].splitlines()[0][:80])
    return " ".join(notes)


def table_rows(record: dict) -> list:
    """One row of strings per result: the columns of format_table and markdown_table."""
    speedup = _speedups(record["results"])
    rows = []
    for r in record["results"]:
        ratio = speedup.get(r["impl"])
        rows.append([
            r["impl"],
            r["precision"],
            _num(r.get("median_ms"), ".3f"),
            _num(r.get("tokens_per_s"), ",.0f"),
            _num(r.get("weight_gbps"), ".0f"),
            _pct(r.get("weight_bw_fraction")),
            _num(r.get("tflops"), ".1f"),
            _pct(r.get("tflops_fraction")),
            _num(r.get("rel_err"), ".1e"),
            _num(r.get("kernels_per_call"), "d"),
            "-" if ratio is None else f"{ratio:.2f}x",
            _status(r),
        ])
    return rows


COLUMNS = ["impl", "prec", "median ms", "tokens/s", "weight GB/s", "of copy", "TFLOP/s",
           "of peak", "rel_err", "kernels", f"vs {SPEEDUP_BASELINE}", "notes"]


def format_table(record: dict) -> str:
    """The plain-text table printed at the end of a run."""
    cfg, c = record["config"], record["ceilings"]
    head = (f"{cfg['name']}  {_shape(cfg)}  on {record['gpu']}\n"
            f"ceilings: copy {_num(c.get('copy_gbps'), '.0f')} GB/s, "
            f"bf16 {_num(c.get('bf16_tflops'), '.0f')} TFLOP/s, "
            f"fp8 {_num(c.get('fp8_tflops'), '.0f')} TFLOP/s")
    rows = [COLUMNS] + table_rows(record)
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS) - 1)]
    lines = [head]
    for row in rows:
        cells = [cell.rjust(w) if i > 1 else cell.ljust(w) for i, (cell, w) in
                 enumerate(zip(row, widths))]
        lines.append("  ".join(cells + [row[-1]]).rstrip())
    return "\n".join(lines)


def format_sweep(records: list) -> str:
    """Median ms per (T, implementation) for the records of one sweep."""
    records = sorted(records, key=lambda r: r["config"]["T"])
    impls = []
    for rec in records:
        for r in rec["results"]:
            if r["impl"] not in impls:
                impls.append(r["impl"])
    lines = [f"{records[0]['config']['name']} sweep on {records[0]['gpu']}: median ms",
             "T".rjust(6) + "".join(name.rjust(max(12, len(name) + 2)) for name in impls)]
    for rec in records:
        by_impl = {r["impl"]: r for r in rec["results"]}
        cells = []
        for name in impls:
            r = by_impl.get(name, {})
            cell = _num(r.get("median_ms"), ".3f", "err" if "error" in r else "-")
            cells.append(cell.rjust(max(12, len(name) + 2)))
        lines.append(str(rec["config"]["T"]).rjust(6) + "".join(cells))
    return "\n".join(lines)


def markdown_table(records: list) -> str:
    """A markdown table of every result of every record, for benchmarks/README.md or the
    project README; sorted by configuration, T and GPU."""
    header = ["config", "shape", "GPU", "commit"] + COLUMNS
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    key = lambda r: (r["config"]["name"], r["config"]["T"], r["gpu"])  # noqa: E731
    for rec in sorted(records, key=key):
        prefix = [rec["config"]["name"], _shape(rec["config"]), rec["gpu"],
                  (rec.get("commit") or "")[:10]]
        for row in table_rows(rec):
            cells = [c.replace("|", "/") for c in prefix + row]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


# Columns of the README summary, in this order; an implementation absent from every record is left
# out. Percentages are the share of the copy ceiling (weight bytes touched / median time).
README_IMPLS = ("flashmoe", "flashmoe-multikernel", "flashmoe-fp8", "flashmoe-fp8-multikernel",
                "flashmoe-sm80", "flashmoe-w8a16", "torch-grouped-mm", "torch-scaled-grouped-mm",
                "torch-eager", "torch-compile", "deepspeed", "vllm", "sglang")


def readme_table(records: list) -> str:
    """The README's summary: one row per configuration (sorted by T, then name), median ms per
    implementation (the fastest of each precision in bold, flashmoe's share of copy in
    parentheses), headed by the card, commit and ceilings of the runs. Records from several cards
    or commits are refused."""
    if not records:
        return ""
    cards = {r["gpu"] for r in records}
    commits = {(r.get("commit") or "")[:7] for r in records}
    if len(cards) != 1 or len(commits) != 1:
        raise ValueError(f"one card and one commit per table, got {sorted(cards)} / {sorted(commits)}")
    present = [name for name in README_IMPLS
               if any(r["impl"] == name and "median_ms" in r for rec in records for r in rec["results"])]
    ceil = [rec["ceilings"] for rec in records]
    span = lambda key: "-".join(sorted({_num(c.get(key), ".0f") for c in ceil}))  # noqa: E731
    graphs = {bool((r.get("timing") or {}).get("graph")) for r in records}
    if len(graphs) != 1:
        raise ValueError("eager and CUDA-graph timings in one table")
    how = "CUDA-graph replays" if graphs.pop() else "eager calls"
    lines = [f"{records[0]['gpu']}, commit `{commits.pop()}`; ceilings measured in the same runs: copy "
             f"{span('copy_gbps')} GB/s, bf16 {span('bf16_tflops')} TFLOP/s, fp8 "
             f"{span('fp8_tflops')} TFLOP/s. Median ms of {how}, lower is better; the fastest of "
             "each precision in bold.", ""]
    lines.append("| config | " + " | ".join(f"{n} ({_precision_of(records, n)})" for n in present) + " |")
    lines.append("|" + " --- |" * (len(present) + 1))
    key = lambda r: (r["config"]["T"], r["config"]["name"])  # noqa: E731
    for rec in sorted(records, key=key):
        by = {r["impl"]: r for r in rec["results"] if "median_ms" in r}
        best = {}
        for r in by.values():
            if r["precision"] not in best or r["median_ms"] < best[r["precision"]]:
                best[r["precision"]] = r["median_ms"]
        cells = []
        for name in present:
            r = by.get(name)
            if r is None:
                cells.append("-")
                continue
            cell = f"{r['median_ms']:.3f}"
            if r["median_ms"] == best[r["precision"]]:
                cell = f"**{cell}**"
            if name.startswith("flashmoe") and r.get("weight_bw_fraction") is not None:
                cell += f" ({_pct(r['weight_bw_fraction'])})"
            cells.append(cell)
        lines.append(f"| `{rec['config']['name']}` ({_shape(rec['config'])}) | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _precision_of(records: list, impl: str) -> str:
    for rec in records:
        for r in rec["results"]:
            if r["impl"] == impl:
                return r["precision"]
    return "?"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="+", help="benchmark JSON files")
    parser.add_argument("--table", action="store_true", help="plain tables instead of markdown")
    parser.add_argument("--readme", action="store_true", help="the README's summary table")
    args = parser.parse_args(argv)
    records = load_records(args.files)
    if args.readme:
        print(readme_table(records))
    elif args.table:
        print("\n\n".join(format_table(r) for r in records))
    else:
        print(markdown_table(records))
    return 0


if __name__ == "__main__":
    sys.exit(main())
