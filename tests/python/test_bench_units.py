"""CPU-only unit tests of the benchmark harness's pure parts: the configuration table, the FLOP and
byte formulas, the JSON record and its schema check, and the report formatting.

They import only benchmarks.configs and benchmarks.report, which need neither torch nor a GPU;
the plot test runs only where matplotlib is installed.
"""

import dataclasses
import json
import os
import statistics
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))

from benchmarks import configs, report  # noqa: E402
from benchmarks.configs import FFN, LINEAR, MoeConfig  # noqa: E402

CEILINGS = {"copy_gbps": 3000.0, "bf16_tflops": 790.0, "fp8_tflops": 1490.0}
ENV = {"gpu": "NVIDIA H100 80GB HBM3", "driver": "580.159.04", "torch": "2.11.0",
       "cuda": "13.0", "commit": "0123456789abcdef", "timestamp": "2026-11-26T00:00:00+00:00"}


# ------------------------------------------------------------------ configuration table


def test_named_configs_match_the_design():
    c = configs.CONFIGS
    assert (c["seed"].kind, c["seed"].T, c["seed"].E, c["seed"].top_k, c["seed"].H, c["seed"].D) == (
        LINEAR, 2048, 256, 8, 4096, 4096)
    for name, tokens in (("decode-1", 1), ("decode-16", 16), ("decode-128", 128), ("prefill", 16384)):
        assert c[name] == dataclasses.replace(c["seed"], name=name, T=tokens)
    assert (c["dsv3"].kind, c["dsv3"].E, c["dsv3"].top_k, c["dsv3"].H, c["dsv3"].I) == (
        FFN, 256, 8, 7168, 2048)
    assert (c["dsv3-tp8"].H, c["dsv3-tp8"].I, c["dsv3-tp8"].E) == (7168, 256, 256)
    assert (c["qwen3"].E, c["qwen3"].top_k, c["qwen3"].H, c["qwen3"].I) == (128, 8, 2048, 768)
    assert (c["mixtral"].E, c["mixtral"].top_k, c["mixtral"].H, c["mixtral"].I) == (8, 2, 4096, 14336)
    assert all(name == cfg.name for name, cfg in c.items())


def test_get_config_tokens_and_unknown_name():
    assert configs.get_config("dsv3", tokens=4096).T == 4096
    assert configs.get_config("dsv3").T == 2048
    with pytest.raises(ValueError, match="unknown config 'nope'"):
        configs.get_config("nope")


def test_sweep_is_powers_of_two_to_4096():
    assert configs.SWEEP_TOKENS[0] == 1 and configs.SWEEP_TOKENS[-1] == 4096
    assert all(b == 2 * a for a, b in zip(configs.SWEEP_TOKENS, configs.SWEEP_TOKENS[1:]))


@pytest.mark.parametrize("kwargs, message", [
    (dict(kind="conv", D=8), "kind"),
    (dict(kind=LINEAR), "D >= 1"),
    (dict(kind=LINEAR, D=8, I=8), "no I"),
    (dict(kind=FFN, I=8, D=8), "no D"),
    (dict(kind=LINEAR, D=8, top_k=5), "top_k must be <= E"),
    (dict(kind=LINEAR, D=8, T=0), "T must be >= 1"),
])
def test_config_rejects_bad_shapes(kwargs, message):
    base = dict(name="x", T=4, E=4, H=8, top_k=2)
    with pytest.raises(ValueError, match=message):
        MoeConfig(**{**base, **kwargs})


def test_small_config_keeps_the_kind():
    s = configs.small_config(configs.CONFIGS["seed"])
    assert (s.kind, s.T, s.E, s.H, s.D, s.top_k) == (LINEAR, 64, 16, 256, 256, 4)
    f = configs.small_config(configs.CONFIGS["mixtral"])
    assert (f.kind, f.T, f.E, f.H, f.I, f.top_k) == (FFN, 64, 8, 256, 128, 2)


# ------------------------------------------------------------------ FLOP and byte formulas


def test_seed_flops_and_weight_bytes():
    seed = configs.CONFIGS["seed"]
    assert seed.flops() == 2 * 2048 * 8 * 4096 * 4096  # 2*T*k*H*D
    # DESIGN.md section 4: the seed's FP8 weights are 4.3 GB, bf16 twice that
    assert seed.weight_bytes(256, "fp8") == pytest.approx(4.295e9, rel=1e-3)
    assert seed.weight_bytes(256, "bf16") == 2 * seed.weight_bytes(256, "fp8")
    # ... and 1.42 ms at 3029 GB/s
    assert seed.weight_bytes(256, "fp8") / 3029e9 * 1e3 == pytest.approx(1.42, abs=0.01)


def test_ffn_flops_count_gate_up_and_down():
    d = configs.CONFIGS["dsv3"]
    assert d.weight_elems_per_expert() == 7168 * 2 * 2048 + 2048 * 7168
    assert d.flops() == 2 * 2048 * 8 * (7168 * 2 * 2048 + 2048 * 7168)
    assert d.out_dim == 7168 and configs.CONFIGS["seed"].out_dim == 4096


def test_input_set_bytes_and_rotation():
    seed = configs.CONFIGS["seed"]
    assert seed.input_set_bytes() == 2048 * (4096 * 2 + 256 * 4)
    l2 = 50 * 2**20
    n = configs.rotation_count(seed.input_set_bytes(), l2)
    assert n * seed.input_set_bytes() > 2 * l2 >= (n - 1) * seed.input_set_bytes()
    assert configs.rotation_count(10**12, l2) == 2  # always at least two sets


def test_config_json_has_the_schema_keys():
    assert configs.CONFIGS["seed"].as_json() == {
        "name": "seed", "T": 2048, "E": 256, "H": 4096, "D": 4096, "top_k": 8, "kind": "linear"}
    j = configs.CONFIGS["qwen3"].as_json()
    assert j["I"] == 768 and "D" not in j and j["kind"] == "ffn"


# ------------------------------------------------------------------ JSON record


def _record(results=None, cfg=None):
    cfg = cfg or configs.CONFIGS["seed"]
    if results is None:
        results = [
            report.result_entry("torch-eager", "bf16", [41.0, 40.0, 45.0], cfg, CEILINGS, 256,
                                rel_err=3e-3, kernels_per_call=1500),
            report.result_entry("flashmoe", "bf16", [3.0, 2.9, 3.1, 5.0], cfg, CEILINGS, 256,
                                rel_err=2e-3, kernels_per_call=1, path="multikernel-sm80"),
            report.failed_entry("deepspeed", "bf16", error="RuntimeError: boom\nmore"),
            report.failed_entry("vllm", "bf16", skipped="vllm is not importable"),
        ]
    return report.make_record(ENV, CEILINGS, cfg, results, timing={"mode": "full"})


def test_result_entry_derived_metrics():
    seed = configs.CONFIGS["seed"]
    e = report.result_entry("x", "fp8", [2.0, 1.0, 3.0], seed, CEILINGS, 128, rel_err=0.03,
                            kernels_per_call=2)
    assert (e["median_ms"], e["min_ms"], e["max_ms"]) == (2.0, 1.0, 3.0)
    assert e["samples_ms"] == [2.0, 1.0, 3.0]
    assert e["tokens_per_s"] == pytest.approx(2048 / 2e-3)
    assert e["weight_gbps"] == pytest.approx(128 * 4096 * 4096 * 1 / 2e-3 / 1e9)
    assert e["weight_bw_fraction"] == pytest.approx(e["weight_gbps"] / 3000.0)
    assert e["tflops"] == pytest.approx(seed.flops() / 2e-3 / 1e12)
    assert e["tflops_fraction"] == pytest.approx(e["tflops"] / 1490.0)  # the fp8 ceiling


def test_result_entry_without_a_ceiling_and_with_nan():
    e = report.result_entry("x", "fp8", [1.0], configs.CONFIGS["seed"], {"copy_gbps": None},
                            256, rel_err=float("nan"))
    assert e["weight_bw_fraction"] is None and e["tflops_fraction"] is None
    assert e["rel_err"] is None  # JSON has no NaN
    with pytest.raises(ValueError):
        report.result_entry("x", "bf16", [], configs.CONFIGS["seed"], CEILINGS, 1)


def test_failed_entry_needs_exactly_one_reason():
    with pytest.raises(ValueError):
        report.failed_entry("x", "bf16")
    with pytest.raises(ValueError):
        report.failed_entry("x", "bf16", error="a", skipped="b")
    assert report.failed_entry("x", "bf16", skipped="no") == {
        "impl": "x", "precision": "bf16", "skipped": "no"}
    long = report.failed_entry("x", "bf16", error="e" * 5000)["error"]
    assert len(long) < 700 and long.endswith("[...]")


def test_record_validates_and_round_trips(tmp_path):
    rec = _record()
    assert report.validate_record(rec) == []
    for key in report.TOP_KEYS:
        assert key in rec
    path = report.write_record(str(tmp_path), rec)
    assert os.path.basename(path) == "seed_2048_nvidia-h100-80gb-hbm3.json"
    with open(path) as f:
        assert json.load(f) == rec


def test_validate_record_finds_problems():
    rec = _record()
    del rec["commit"]
    rec["config"].pop("D")
    rec["ceilings"].pop("fp8_tflops")
    rec["results"][0].pop("kernels_per_call")
    rec["results"][1]["median_ms"] = 99.0
    problems = report.validate_record(rec)
    text = "; ".join(problems)
    for needle in ("'commit'", "'D'", "'fp8_tflops'", "kernels_per_call", "median_ms"):
        assert needle in text, text


def test_write_record_refuses_a_bad_record(tmp_path):
    rec = _record()
    del rec["results"][0]["samples_ms"]
    with pytest.raises(ValueError, match="schema"):
        report.write_record(str(tmp_path), rec)
    assert os.listdir(tmp_path) == []


def test_gpu_slug_and_filename():
    assert report.gpu_slug("NVIDIA H100 80GB HBM3") == "nvidia-h100-80gb-hbm3"
    assert report.gpu_slug("NVIDIA H200") == "nvidia-h200"
    assert report.gpu_slug("???") == "unknown-gpu"
    assert report.record_filename("decode-16", 16, "NVIDIA H200") == "decode-16_16_nvidia-h200.json"


# ------------------------------------------------------------------ formatting


def test_format_table_columns_and_rows():
    text = report.format_table(_record())
    lines = text.splitlines()
    assert lines[0].startswith("seed  T=2048 E=256 H=4096 D=4096 k=8 linear  on NVIDIA H100")
    assert "copy 3000 GB/s, bf16 790 TFLOP/s, fp8 1490 TFLOP/s" in lines[1]
    header = lines[2]
    for col in ("impl", "median ms", "tokens/s", "weight GB/s", "TFLOP/s", "rel_err", "kernels"):
        assert col in header
    flash = next(line for line in lines if line.startswith("flashmoe"))
    assert "3.050" in flash  # the median of 2.9, 3.0, 3.1, 5.0
    assert "path=multikernel-sm80" in flash
    assert "13.44x" in flash  # 41.0 / 3.05 vs torch-eager
    assert "2.0e-03" in flash
    assert "error: RuntimeError: boom" in text and "more" not in text
    assert "skipped: vllm is not importable" in text


def test_format_table_percentages():
    seed = configs.CONFIGS["seed"]
    rec = _record([report.result_entry("x", "bf16", [2.84], seed, CEILINGS, 256)])
    row = report.format_table(rec).splitlines()[-1]
    # 8.59 GB of bf16 weights in 2.84 ms: ~3025 GB/s, ~101% of a 3000 GB/s copy
    assert "3025" in row and "101%" in row


def test_format_sweep():
    seed = configs.CONFIGS["seed"]
    recs = [_record([report.result_entry("a", "bf16", [float(t)], seed.with_tokens(t), CEILINGS, 8),
                     report.failed_entry("b", "bf16", error="x")], cfg=seed.with_tokens(t))
            for t in (4, 1, 2)]
    lines = report.format_sweep(recs).splitlines()
    assert [line.split()[0] for line in lines[2:]] == ["1", "2", "4"]
    assert lines[2].split()[1:] == ["1.000", "err"]


def test_markdown_table():
    md = report.markdown_table([_record(), _record(cfg=configs.CONFIGS["decode-16"])])
    lines = md.splitlines()
    assert lines[0].startswith("| config | shape | GPU | commit | impl |")
    assert set(lines[1]) <= set("|-")
    assert len(lines) == 2 + 2 * 4
    assert lines[2].startswith("| decode-16 |")  # sorted by config name
    assert all(line.count("|") == lines[0].count("|") for line in lines)


def test_readme_table_one_row_per_config_fastest_in_bold():
    seed = _record()
    dsv3 = _record(cfg=configs.CONFIGS["dsv3"])
    text = report.readme_table([seed, dsv3])
    assert text.startswith("NVIDIA H100 80GB HBM3, commit ")
    rows = [line for line in text.splitlines() if line.startswith("| `")]
    # sorted by T, then by name
    assert len(rows) == 2 and rows[0].startswith("| `dsv3`") and rows[1].startswith("| `seed`")
    header = next(line for line in text.splitlines() if line.startswith("| config"))
    # deepspeed and vllm never produced a time: no column for them
    assert "flashmoe (bf16)" in header and "torch-eager (bf16)" in header
    assert "deepspeed" not in header and "vllm" not in header
    # flashmoe (median 3.05) is the fastest bf16: bold, with its share of copy
    assert "**3.050** (" in rows[1] and "**41.000**" not in rows[1]


def test_readme_table_refuses_mixed_cards():
    other = _record()
    other["gpu"] = "NVIDIA H200"
    with pytest.raises(ValueError):
        report.readme_table([_record(), other])


def test_readme_table_names_the_timing_and_refuses_mixing_it():
    eager = _record()
    assert "Median ms of eager calls" in report.readme_table([eager])
    graph = _record(cfg=configs.CONFIGS["decode-1"])
    graph["timing"] = {"mode": "quick", "graph": True}
    assert "Median ms of CUDA-graph replays" in report.readme_table([graph])
    with pytest.raises(ValueError):
        report.readme_table([eager, graph])


def test_statistics_median_is_the_median_of_samples():
    e = report.result_entry("x", "bf16", [5.0, 1.0, 3.0, 2.0], configs.CONFIGS["seed"],
                            CEILINGS, 256)
    assert e["median_ms"] == statistics.median([1.0, 2.0, 3.0, 5.0]) == 2.5


def test_plot_writes_a_png(tmp_path):
    pytest.importorskip("matplotlib", reason="matplotlib is not installed here")
    from benchmarks import plot

    seed = configs.CONFIGS["seed"]
    recs = [_record([report.result_entry("a", "bf16", [1.0 + t], seed.with_tokens(t), CEILINGS, 8)],
                    cfg=seed.with_tokens(t)) for t in (1, 2, 4)]
    path = plot.plot_sweep(recs, str(tmp_path / plot.sweep_filename("seed", ENV["gpu"])))
    with open(path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    assert plot.series(recs)[("a", "bf16")][0] == [1, 2, 4]
