"""FLOP count of a model forward: torch's counter for the dense ops plus the deformable convs.

torch.utils.flop_counter does not know custom ops, so each DCN layer adds the FLOPs of the
equivalent dense conv (its GEMM); the bilinear sampling is not counted, as in the literature.
"""
from __future__ import annotations

import torch
from torch.utils.flop_counter import FlopCounterMode


def count_flops(model: torch.nn.Module, x: torch.Tensor) -> int:
    dcn_flops = 0
    hooks = []

    def dcn_hook(module: torch.nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        nonlocal dcn_flops
        cout, cin, kh, kw = module.weight.shape
        n, _, h, w = output.shape
        dcn_flops += 2 * n * cout * cin * kh * kw * h * w

    for module in model.modules():
        if type(module).__name__ == "DeformConv2d":
            hooks.append(module.register_forward_hook(dcn_hook))
    try:
        with torch.inference_mode(), FlopCounterMode(display=False) as counter:
            model(x)
    finally:
        for hook in hooks:
            hook.remove()
    return int(counter.get_total_flops()) + dcn_flops
