"""What a training step achieves on its device: model FLOP utilisation (MFU) against a datasheet peak.

MFU = model FLOPs of the steps (the model config's `training_flops`, each family its own) / (elapsed seconds x
GPUs x the GPU's dense bf16 peak). The peaks are NVIDIA's datasheet figures without sparsity, for the GPUs in
the table; for any other device there is no MFU rather than a guess.
"""

from __future__ import annotations

import re

# Dense bf16 tensor-core peak FLOP/s by GPU name, most specific first (matched as whole words of the name).
DENSE_BF16_PEAK_FLOPS = (
    ("H100 NVL", 835e12),
    ("H100 PCIe", 756e12),
    ("H100", 989e12),  # SXM, e.g. "NVIDIA H100 80GB HBM3"
    ("H200 NVL", 835e12),
    ("H200", 989e12),
    ("A100", 312e12),
    ("L4", 121e12),
    ("A10G", 70e12),  # AWS's A10G, not the A10 (125e12)
)


def dense_bf16_peak_flops(device_name: str) -> float | None:
    """The dense bf16 peak of a GPU given its name (`torch.cuda.get_device_name()`); None when not known."""
    words = " ".join(re.split(r"[\s_-]+", device_name.upper()))
    for name, peak in DENSE_BF16_PEAK_FLOPS:
        if re.search(rf"(^|\s){re.escape(name.upper())}(\s|$)", words):
            return peak
    return None
