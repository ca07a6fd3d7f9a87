"""flashmoe_science: a fused Mixture-of-Experts layer.

    from flashmoe_science import fused_moe
    out = fused_moe(tokens, expert_weights, routing_weights, top_k=8)
    experts = prepare_experts(expert_weights, precision="fp8")   # CUDA: quantize once
    out = fused_moe(tokens, experts, routing_weights, top_k=8, precision="fp8")

NumPy arrays and CPU torch tensors run the C++ reference; CUDA tensors run the GPU path. The
routing rules are stated in include/flashmoe/routing.h. When torch is importable, the op is also
registered as `torch.ops.flashmoe.fused_moe` (torch.compile-traceable) and the nn.Module
`FusedMoE` (router + experts, loadable from Hugging Face MoE state dicts) is exported.
"""

from . import _C  # noqa: F401  (import the extension first: a build problem shows here)
from ._checks import torch as _torch
from .ops import fused_moe, fused_moe_workspace_size
from .prepare import PreparedExperts, clear_prepare_cache, prepare_experts
from .schedule import TemperatureSchedule, annealed_temperature
from .stats import MoeStats

__version__ = "0.1.0"
__all__ = [
    "fused_moe",
    "fused_moe_workspace_size",
    "MoeStats",
    "PreparedExperts",
    "prepare_experts",
    "clear_prepare_cache",
    "TemperatureSchedule",
    "annealed_temperature",
]

if _torch is not None:  # the nn.Module needs torch
    from .module import FusedMoE  # noqa: F401  (exported through __all__)

    __all__.append("FusedMoE")
