"""Times flashmoe and the baselines on named MoE shapes, in one process on one GPU, and writes one
JSON file per GPU and configuration (schema: benchmarks/README.md).

    python3 -m benchmarks.bench_moe --config seed --quick
    python3 -m benchmarks.bench_moe --config seed --config dsv3 --out /tmp/results
    python3 -m benchmarks.bench_moe --config qwen3 --sweep
    python3 -m benchmarks.bench_moe --config dsv3 --tokens 4096 --impl flashmoe torch-grouped-mm

Per configuration: random inputs (tokens bf16 N(0, 1), logits fp32 N(0, 1), weights scaled by
1/sqrt(fan-in) so outputs are O(1)), rotated through sets larger than L2; then, for each
implementation: build it (untimed), warm up, time every rep with CUDA events, count the kernels of
one forward with the profiler, and measure its rel_err on a small shape of the same kind against
a float64 CPU reference. Failures become entries with an "error" field; the run goes on.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import math
import os
import subprocess
import sys
import traceback

import torch

from benchmarks import baselines, ceilings, configs, report, timing

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_OUT = os.path.join(REPO_ROOT, "benchmarks", "results")


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", action="extend", nargs="+", metavar="NAME",
                   help=f"configurations to run (default: seed); known: {', '.join(configs.CONFIGS)}")
    p.add_argument("--tokens", type=int, metavar="T", help="run the configurations at T tokens")
    p.add_argument("--sweep", action="store_true",
                   help="run each configuration at T = 1, 2, 4, ..., 4096 and plot tokens/s vs T")
    p.add_argument("--quick", action="store_true", help="fewer warm-up calls and reps")
    p.add_argument("--graph", action="store_true",
                   help="time CUDA-graph replays (one graph per input set, "
                   f"{timing.GRAPH_SETS} sets), as serving stacks run decode; an "
                   "implementation that cannot be captured is recorded as skipped")
    p.add_argument("--reps", type=int, help="timed reps per implementation (default: by budget)")
    p.add_argument("--impl", action="extend", nargs="+", metavar="NAME",
                   help=f"implementations to time (default: all); known: {', '.join(baselines.IMPLS)}")
    p.add_argument("--out", default=DEFAULT_OUT, help="folder for the JSON (and PNG) files")
    args = p.parse_args(argv)
    args.config = args.config or ["seed"]
    args.impl = args.impl or list(baselines.IMPLS)
    for name in args.config:
        if name not in configs.CONFIGS:
            p.error(f"unknown config {name!r}; known: {', '.join(configs.CONFIGS)}")
    for name in args.impl:
        if name not in baselines.IMPLS:
            p.error(f"unknown impl {name!r}; known: {', '.join(baselines.IMPLS)}")
    if args.sweep and args.tokens is not None:
        p.error("--sweep and --tokens exclude each other")
    return args


def _command_output(cmd, cwd=None):
    try:
        out = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return None
    line = out.stdout.strip().splitlines()[0].strip() if out.stdout.strip() else ""
    return line if out.returncode == 0 and line else None


def environment() -> dict:
    """The run's provenance: gpu, driver, torch, cuda, commit, timestamp."""
    driver = _command_output(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"])
    commit = os.environ.get("FLASHMOE_COMMIT") or _command_output(
        ["git", "rev-parse", "HEAD"], cwd=REPO_ROOT)
    return {
        "gpu": torch.cuda.get_device_name(),
        "driver": driver,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "commit": commit or "unknown",
        "timestamp": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


# ------------------------------------------------------------------ data


def _randn(shape, dtype, device, gen, scale=1.0):
    return (torch.randn(shape, generator=gen, device=device, dtype=torch.float32) * scale).to(dtype)


def make_weights(cfg: configs.MoeConfig, device, gen):
    """Random bf16 expert weights, N(0, 1/fan_in), generated one expert at a time."""
    if cfg.kind == configs.LINEAR:
        shapes = [((cfg.H, cfg.D), cfg.H**-0.5)]
    else:
        shapes = [((cfg.H, 2 * cfg.I), cfg.H**-0.5), ((cfg.I, cfg.H), cfg.I**-0.5)]
    mats = []
    for shape, scale in shapes:
        m = torch.empty((cfg.E,) + shape, dtype=torch.bfloat16, device=device)
        for e in range(cfg.E):
            m[e] = _randn(shape, torch.bfloat16, device, gen, scale)
        mats.append(m)
    return mats[0] if len(mats) == 1 else tuple(mats)


def make_inputs(cfg: configs.MoeConfig, sets: int, device, gen):
    """`sets` input sets as views of two tensors: (list of (tokens [T, H] bf16, logits [T, E]
    fp32), all logits [sets, T, E])."""
    tokens = _randn((sets * cfg.T, cfg.H), torch.bfloat16, device, gen)
    logits = _randn((sets * cfg.T, cfg.E), torch.float32, device, gen)
    pairs = [(tokens[i * cfg.T:(i + 1) * cfg.T], logits[i * cfg.T:(i + 1) * cfg.T])
             for i in range(sets)]
    return pairs, logits.view(sets, cfg.T, cfg.E)


def experts_touched(logits, top_k: int) -> float:
    """Mean over input sets of the number of distinct experts their top-k routing selects."""
    ids = logits.topk(top_k, dim=-1).indices.reshape(logits.shape[0], -1)
    hit = torch.zeros(logits.shape[0], logits.shape[2], dtype=torch.bool, device=logits.device)
    return hit.scatter_(1, ids, True).sum(dim=1).float().mean().item()


# ------------------------------------------------------------------ one implementation


def _error_text(e: BaseException) -> str:
    frames = traceback.extract_tb(e.__traceback__)
    where = f" (at {os.path.basename(frames[-1].filename)}:{frames[-1].lineno})" if frames else ""
    return f"{type(e).__name__}: {e}{where}"


def _free() -> None:
    gc.collect()
    torch.cuda.empty_cache()


def _reported_path(built, args):
    """The kernel path the implementation reports (flashmoe), or None."""
    if built.path is None:
        return None
    try:
        return built.path(*args) or "not reported"
    except Exception as e:  # noqa: BLE001 -- the timing still stands
        return f"not reported ({_error_text(e)})"


def measure_rel_err(name: str, small: dict) -> tuple:
    """(rel_err, error text) of one implementation on the small shape."""
    built = None
    try:
        built = baselines.IMPLS[name].build(small["cfg"], small["weights"])
        out = built.fn(small["tokens"], small["logits"])
        torch.cuda.synchronize()
        logits = built.router(small["tokens"]) if built.router else small["logits"]
        ref = baselines.reference_moe(small["tokens"], logits, small["weights"],
                                      small["cfg"].top_k)
        if tuple(out.shape) != tuple(ref.shape):
            return None, f"output shape {tuple(out.shape)}, expected {tuple(ref.shape)}"
        err = baselines.rel_err(out, ref)
        return (err, None) if math.isfinite(err) else (None, "non-finite output")
    except Exception as e:  # noqa: BLE001 -- recorded in the JSON
        return None, _error_text(e)
    finally:
        built = None
        _free()


def run_impl(name: str, cfg: configs.MoeConfig, weights, inputs: dict, touched: dict,
             ceil: dict, mode: str, reps, small: dict, graph: bool = False) -> dict:
    """{T: result entry} for one implementation over the token counts in `inputs`."""
    precision = baselines.IMPLS[name].precision
    try:
        built = baselines.IMPLS[name].build(cfg, weights)
    except baselines.Unavailable as e:
        log(f"  {name}: skipped: {e}")
        return {T: report.failed_entry(name, precision, skipped=str(e)) for T in inputs}
    except Exception as e:  # noqa: BLE001
        log(f"  {name}: build failed: {_error_text(e)}")
        _free()
        return {T: report.failed_entry(name, precision, error=_error_text(e)) for T in inputs}

    timed = {}
    for T, arg_sets in inputs.items():
        try:
            if graph:
                try:
                    samples = timing.bench_graph(built.fn, arg_sets, mode, reps)
                except Exception as e:  # noqa: BLE001 -- recorded as skipped, not as an error
                    torch.cuda.synchronize()
                    timed[T] = report.failed_entry(
                        name, precision, skipped=f"not capturable in a CUDA graph: {_error_text(e)}")
                    log(f"  {name} T={T}: skipped (graph capture): {_error_text(e)}")
                    continue
            else:
                samples = timing.bench(built.fn, arg_sets, mode, reps)
            kernels = timing.count_kernels(lambda: built.fn(*arg_sets[0]))
            path = _reported_path(built, arg_sets[0])
            timed[T] = (samples, kernels, path)
            log(f"  {name} T={T}: median {sorted(samples)[len(samples) // 2]:.3f} ms over "
                f"{len(samples)} reps, {kernels} kernels" + (f", path {path}" if path else ""))
        except NotImplementedError as e:  # the library's word for "this build cannot run it"
            timed[T] = report.failed_entry(name, precision, skipped=_error_text(e))
            log(f"  {name} T={T}: skipped: {e}")
        except Exception as e:  # noqa: BLE001
            timed[T] = report.failed_entry(name, precision, error=_error_text(e))
            log(f"  {name} T={T}: error: {_error_text(e)}")
    note = built.note
    built = None  # release its weights and buffers before the rel_err build
    _free()

    if all(isinstance(result, dict) for result in timed.values()):
        return timed  # nothing ran: no rel_err to add
    rel, rel_error = measure_rel_err(name, small)
    log(f"  {name}: rel_err {rel}" + (f" ({rel_error})" if rel_error else ""))
    entries = {}
    for T, result in timed.items():
        if isinstance(result, dict):
            entries[T] = result
            continue
        samples, kernels, path = result
        entries[T] = report.result_entry(
            name, precision, samples, cfg.with_tokens(T), ceil, touched[T], rel_err=rel,
            kernels_per_call=kernels, path=path, rel_err_error=rel_error, note=note)
    return entries


# ------------------------------------------------------------------ one configuration


def small_problem(cfg: configs.MoeConfig) -> dict:
    """The rel_err shape's data: generated on the CPU (the reference's inputs), used on the GPU."""
    small = configs.small_config(cfg)
    gen = torch.Generator().manual_seed(1)
    weights = make_weights(small, "cpu", gen)
    pairs, _ = make_inputs(small, 1, "cpu", gen)
    to_gpu = lambda t: t.cuda()  # noqa: E731
    return {
        "cfg": small,
        "weights": tuple(map(to_gpu, weights)) if isinstance(weights, tuple) else to_gpu(weights),
        "tokens": to_gpu(pairs[0][0]),
        "logits": to_gpu(pairs[0][1]),
    }


def run_config(cfg: configs.MoeConfig, token_counts, args, env: dict, ceil: dict,
               ceiling_errors: dict) -> list:
    """Times every requested implementation at each token count; writes and returns the records."""
    mode = "quick" if args.quick else "full"
    gen = torch.Generator(device="cuda").manual_seed(0)
    log(f"[{cfg.name}] generating weights ({cfg.E} experts, kind {cfg.kind})")
    weights = make_weights(cfg, "cuda", gen)
    l2 = timing.l2_cache_bytes()
    inputs, touched, sets = {}, {}, {}
    for T in token_counts:
        cfg_t = cfg.with_tokens(T)
        sets[T] = configs.rotation_count(cfg_t.input_set_bytes(), l2)
        inputs[T], logits = make_inputs(cfg_t, sets[T], "cuda", gen)
        touched[T] = experts_touched(logits, cfg.top_k)
    small = small_problem(cfg)

    entries = {T: [] for T in token_counts}
    with torch.no_grad():
        for name in args.impl:
            log(f"[{cfg.name}] {name}")
            for T, entry in run_impl(name, cfg, weights, inputs, touched, ceil, mode, args.reps,
                                     small, graph=args.graph).items():
                entries[T].append(entry)

    records = []
    for T in token_counts:
        extra = {"timing": {"mode": mode, "l2_bytes": l2, "warmup": timing.REPS[mode]["warmup"],
                            "graph": bool(args.graph),
                            "input_sets": min(sets[T], timing.GRAPH_SETS) if args.graph
                            else sets[T]},
                 "routing": {"experts_touched": touched[T]}}
        if ceiling_errors:
            extra["ceiling_errors"] = ceiling_errors
        record = report.make_record(env, ceil, cfg.with_tokens(T), entries[T], **extra)
        path = report.write_record(args.out, record)
        log(f"[{cfg.name}] wrote {path}")
        records.append(record)
    del weights, inputs
    _free()
    return records


def main(argv=None) -> int:
    args = parse_args(argv)
    if not torch.cuda.is_available():
        log("bench_moe: needs a CUDA GPU (torch.cuda.is_available() is False)")
        return 2
    env = environment()
    log(f"{env['gpu']}  driver {env['driver']}  torch {env['torch']}  cuda {env['cuda']}  "
        f"commit {env['commit']}")
    ceil, ceiling_errors = ceilings.measure("quick" if args.quick else "full")
    log("ceilings: " + ", ".join(f"{k} {v:.0f}" if v else f"{k} failed ({ceiling_errors[k]})"
                                 for k, v in ceil.items()))
    tables = []
    for name in args.config:
        cfg = configs.get_config(name, tokens=args.tokens)
        token_counts = configs.SWEEP_TOKENS if args.sweep else (cfg.T,)
        records = run_config(cfg, token_counts, args, env, ceil, ceiling_errors)
        if args.sweep:
            from benchmarks import plot  # matplotlib only when plotting

            png = os.path.join(args.out, plot.sweep_filename(cfg.name, env["gpu"]))
            log(f"[{cfg.name}] wrote {plot.plot_sweep(records, png)}")
            tables.append(report.format_sweep(records))
        else:
            tables.extend(report.format_table(r) for r in records)
    print("\n\n".join(tables), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
