"""An independent NumPy float64 model of the op, written from the rules in
include/flashmoe/routing.h and include/flashmoe/reference.h. It never calls the extension, so
the tests compare two implementations of the same written rules.

Plain loops where the rules are sequential (ties, capacity, reroute rounds): the test shapes are
small and clarity beats speed here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import numpy as np


# ---- number formats (reference.h: bf16 rounding; quantization.h: E4M3) --------------------


def _round_significant(x: np.ndarray, bits: int, min_exp: int) -> np.ndarray:
    """Rounds to `bits` significant bits (ties to even); exponents below min_exp are subnormal."""
    x = np.asarray(x, dtype=np.float64)
    _, e = np.frexp(x)  # x = m * 2**e, 0.5 <= |m| < 1
    quantum = np.ldexp(1.0, np.maximum(e, min_exp + 1) - bits)
    return np.rint(x / quantum) * quantum


def round_bf16(x: np.ndarray) -> np.ndarray:
    """bfloat16: 8 significant bits, smallest normal 2**-126."""
    return _round_significant(x, 8, -126)


def round_e4m3(x: np.ndarray) -> np.ndarray:
    """E4M3FN: 4 significant bits, smallest normal 2**-6, saturating at +-448."""
    return np.clip(_round_significant(x, 4, -6), -448.0, 448.0)


def fake_quant_e4m3(v: np.ndarray, axis: int) -> np.ndarray:
    """Scaled E4M3 fake quantization, one group per index of the other axes (over `axis`)."""
    amax = np.max(np.abs(v), axis=axis, keepdims=True)
    scale = np.where(amax > 0, amax / 448.0, 1.0)
    return round_e4m3(v / scale) * scale


# ---- routing (routing.h steps 1-7) --------------------------------------------------------


@dataclass
class Routing:
    ids: np.ndarray  # [T, k] int, -1 = dropped / none
    weights: np.ndarray  # [T, k] float64, 0 where dropped
    load: np.ndarray  # [E] int
    dropped: int
    rerouted: int
    probs: Optional[np.ndarray]  # [T, E] p (None when pre-routed)


def scores(s: np.ndarray, scoring: str, temperature: float) -> np.ndarray:
    z = np.asarray(s, dtype=np.float64) / temperature
    if scoring == "softmax":
        ez = np.exp(z - z.max(axis=1, keepdims=True))
        return ez / ez.sum(axis=1, keepdims=True)
    if scoring == "sigmoid":
        return 1.0 / (1.0 + np.exp(-z))
    assert scoring == "none"
    return np.asarray(s, dtype=np.float64)


def _order(values: np.ndarray, candidates) -> list:
    """Candidates sorted by value descending, ties to the lower index."""
    return sorted(candidates, key=lambda e: (-values[e], e))


def route(
    routing_weights=None,
    *,
    top_k: int,
    num_experts: int,
    scoring: str = "softmax",
    renormalize: bool = True,
    temperature: float = 1.0,
    n_group: int = 0,
    topk_group: int = 0,
    correction_bias=None,
    routed_scaling_factor: float = 1.0,
    topk_ids=None,
    topk_weights=None,
    capacity_factor: float = 0.0,
    overflow: str = "drop",
) -> Routing:
    E, k = num_experts, top_k
    if topk_ids is not None:  # pre-routed: steps 1-5 skipped
        ids = np.array(topk_ids, dtype=np.int64)
        w = np.array(topk_weights, dtype=np.float64)
        T = ids.shape[0]
        p = None
        q = None
    else:
        p = scores(routing_weights, scoring, temperature)
        T = p.shape[0]
        q = p + (0.0 if correction_bias is None else np.asarray(correction_bias, np.float64))
        ids = np.full((T, k), -1, dtype=np.int64)
        w = np.zeros((T, k), dtype=np.float64)
        for t in range(T):
            eligible = range(E)
            if n_group > 0:
                size = E // n_group
                gscore = []
                for g in range(n_group):
                    members = sorted(q[t, g * size : (g + 1) * size], reverse=True)
                    if correction_bias is not None:
                        gscore.append(sum(members[:2]))
                    else:
                        gscore.append(members[0])
                kept = _order(np.array(gscore), range(n_group))[:topk_group]
                eligible = [e for g in sorted(kept) for e in range(g * size, (g + 1) * size)]
            chosen = _order(q[t], eligible)[:k]
            ids[t] = chosen
            wt = p[t, chosen]
            if renormalize and wt.sum() > 0:
                wt = wt / wt.sum()
            w[t] = wt * routed_scaling_factor

    dropped = rerouted = 0
    if capacity_factor > 0:
        cap = math.ceil(capacity_factor * (T * k) / E)

        def prio(t, j, e):
            return p[t, e] if p is not None else w[t, j]

        # First pass (drop and reroute alike): each expert keeps its cap best assignments.
        per_expert = {e: [] for e in range(E)}
        for t in range(T):
            for j in range(k):
                if ids[t, j] >= 0:
                    per_expert[int(ids[t, j])].append((t, j))
        load = np.zeros(E, dtype=np.int64)
        pending = []
        for e, items in per_expert.items():
            items.sort(key=lambda tj: (-prio(tj[0], tj[1], e), tj[0], tj[1]))
            load[e] = min(len(items), cap)
            pending += items[cap:]
        original = ids.copy()
        for t, j in pending:
            ids[t, j] = -1
        if overflow == "drop":
            dropped = len(pending)
        else:
            used = [set(int(e) for e in original[t] if e >= 0) for t in range(T)]
            pref = [_order(q[t], range(E)) for t in range(T)]
            pending = sorted(pending)  # by token, then slot
            while pending:
                full = load >= cap
                proposals = {}
                proposed_now = {}
                still = []
                for t, j in pending:
                    taken = proposed_now.setdefault(t, set())
                    target = next(
                        (e for e in pref[t] if not full[e] and e not in used[t] and e not in taken),
                        None,
                    )
                    if target is None:
                        dropped += 1
                        continue
                    taken.add(target)
                    proposals.setdefault(target, []).append((t, j))
                    still.append((t, j))
                accepted = set()
                for e, props in proposals.items():
                    room = cap - load[e]
                    props.sort(key=lambda tj: (-p[tj[0], e], tj[0], tj[1]))
                    for t, j in props[:room]:
                        ids[t, j] = e
                        used[t].add(e)
                        load[e] += 1
                        rerouted += 1
                        accepted.add((t, j))
                pending = [tj for tj in still if tj not in accepted]
        w = np.where(ids >= 0, w, 0.0)
    load = np.zeros(E, dtype=np.int64)
    for e in ids.ravel():
        if e >= 0:
            load[e] += 1
    return Routing(ids, w, load, dropped, rerouted, p)


# ---- the op (reference.h) -------------------------------------------------------------------


def _act(g: np.ndarray, activation: str) -> np.ndarray:
    if activation == "silu":
        return g / (1.0 + np.exp(-g))
    erf = np.vectorize(math.erf, otypes=[np.float64])
    return g * 0.5 * (1.0 + erf(g / math.sqrt(2.0)))


def fused_moe(
    tokens,
    expert_weights,
    routing_weights=None,
    top_k: Optional[int] = None,
    *,
    activation: str = "silu",
    layout: str = "in_out",
    precision: str = "auto",
    expert_map=None,
    **routing_options,
):
    """Returns (out float64 with the output's shape, Routing)."""
    x = np.asarray(tokens, dtype=np.float64)
    lead, H = x.shape[:-1], x.shape[-1]
    x = x.reshape(-1, H)
    gated = isinstance(expert_weights, (tuple, list))
    mats = [
        np.asarray(m, dtype=np.float64) for m in (expert_weights if gated else [expert_weights])
    ]
    if layout == "out_in":
        mats = [m.transpose(0, 2, 1) for m in mats]  # back to [E, in, out]
    E_local = mats[0].shape[0]
    if routing_weights is not None:
        E = np.asarray(routing_weights).shape[1]
    elif expert_map is not None:
        E = len(expert_map)
    else:
        E = E_local
    if top_k is None:
        top_k = (
            8 if routing_weights is not None else np.asarray(routing_options["topk_ids"]).shape[1]
        )
    r = route(routing_weights, top_k=top_k, num_experts=E, **routing_options)

    if precision == "bf16":
        x = round_bf16(x)
        mats = [round_bf16(m) for m in mats]
    elif precision == "fp8":
        x = fake_quant_e4m3(x, axis=1)  # per token row
        mats = [fake_quant_e4m3(m, axis=1) for m in mats]  # per (expert, output channel)

    out_dim = H if gated else mats[0].shape[2]
    out = np.zeros((x.shape[0], out_dim))
    for t in range(x.shape[0]):
        for j in range(top_k):
            e = int(r.ids[t, j])
            if e < 0:
                continue
            le = e if expert_map is None else int(expert_map[e])
            if le < 0:
                continue
            if gated:
                wgu, wd = mats[0][le], mats[1][le]
                inter = wgu.shape[1] // 2
                h = x[t] @ wgu
                a = _act(h[:inter], activation) * h[inter:]
                if precision == "fp8":  # bf16 rows, then per-row E4M3 (reference.h)
                    a = fake_quant_e4m3(round_bf16(a)[None, :], axis=1)[0]
                y = a @ wd
            else:
                y = x[t] @ mats[0][le]
            out[t] += r.weights[t, j] * y
    return out.reshape(tuple(lead) + (out_dim,)), r


def rel_err(got, want) -> float:
    """Relative Frobenius error ||got - want|| / ||want|| in float64 (NaN never passes)."""
    got = np.asarray(got, dtype=np.float64)
    want = np.asarray(want, dtype=np.float64)
    if not np.all(np.isfinite(got)):
        return math.inf
    denom = np.linalg.norm(want)
    return float(np.linalg.norm(got - want) / (denom if denom > 0 else 1.0))
