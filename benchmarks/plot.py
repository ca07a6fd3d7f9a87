"""PNG of tokens/s against T, one line per implementation, from the records of one sweep.

    python3 -m benchmarks.plot benchmarks/results/seed_*_nvidia-h100-80gb-hbm3.json --out seed.png
"""

from __future__ import annotations

import argparse
import sys

import matplotlib

matplotlib.use("Agg")  # no display on the GPU machine
import matplotlib.pyplot as plt  # noqa: E402

from benchmarks import report  # noqa: E402


def sweep_filename(config_name: str, gpu_name: str) -> str:
    return f"{config_name}_sweep_{report.gpu_slug(gpu_name)}.png"


def series(records: list) -> dict:
    """{(impl, precision): ([T...], [tokens/s...])} over the timed results, T ascending."""
    out = {}
    for rec in sorted(records, key=lambda r: r["config"]["T"]):
        for r in rec["results"]:
            if r.get("tokens_per_s") is None:
                continue
            xs, ys = out.setdefault((r["impl"], r["precision"]), ([], []))
            xs.append(rec["config"]["T"])
            ys.append(r["tokens_per_s"])
    return out


def plot_sweep(records: list, path: str) -> str:
    """Writes the PNG to `path` and returns it."""
    cfg = records[0]["config"]
    fig, ax = plt.subplots(figsize=(8, 5))
    for (impl, precision), (xs, ys) in series(records).items():
        ax.plot(xs, ys, marker="o", label=f"{impl} ({precision})")
    width = f"D={cfg['D']}" if "D" in cfg else f"I={cfg['I']}"
    ax.set_title(f"{cfg['name']}: E={cfg['E']} top-{cfg['top_k']} H={cfg['H']} {width} "
                 f"({cfg['kind']}) on {records[0]['gpu']}", fontsize=10)
    ax.set_xscale("log", base=2)
    token_counts = sorted({rec["config"]["T"] for rec in records})
    ax.set_xticks(token_counts, [str(t) for t in token_counts])
    ax.set_yscale("log")
    ax.set_xlabel("tokens per forward (T)")
    ax.set_ylabel("tokens/s (median)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="+", help="JSON records of one configuration and GPU")
    parser.add_argument("--out", required=True, help="PNG path")
    args = parser.parse_args(argv)
    print(plot_sweep(report.load_records(args.files), args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
