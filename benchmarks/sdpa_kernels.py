"""Which attention kernels our BERT reaches on a GPU in bf16, and whether each computes the right values (a
check to run on a GPU, not a test).

Forward and backward of the `base` preset under bf16 autocast, on a batch without padding (the dense path:
flash, no mask) and on one with padding (the unpadded path: nested tensors through SDPA, or varlen_attn),
with SDPA restricted to one kernel at a time. A kernel that cannot serve the call raises, and is reported as
not available. The output of one that ran is compared at the real positions with the padded model
(`unpad=False`) in float32 under the math kernel, same weights and batch, dropout off: its largest
difference must stay within twice that of the padded model under the math kernel in the same dtype (the
dtype's own rounding, as flash-attention's tests measure it) plus a small slack; a kernel beyond it is
reported as WRONG and the script exits non-zero after the other checks. Then the unpadded path runs once in
training mode with attention dropout 0.1, which only the nested-tensor path applies.

    python benchmarks/sdpa_kernels.py
    python benchmarks/sdpa_kernels.py --device cpu --preset tiny --batch 4 --seq-len 64   # a quick look
"""

from __future__ import annotations

import argparse
import dataclasses

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from model import BertConfig, BertForPreTraining

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
SLACK = {torch.bfloat16: 2e-3, torch.float16: 5e-4, torch.float32: 1e-4}
"""Added to the tolerance: a kernel may round differently from the math kernel by about this much more."""


def make_batch(
    vocab_size: int, batch: int, seq_len: int, padded: bool, device: str
) -> dict[str, torch.Tensor]:
    input_ids = torch.randint(5, vocab_size, (batch, seq_len), device=device)
    attention_mask = torch.ones(batch, seq_len, dtype=torch.long, device=device)
    if padded:  # each row keeps a different number of real tokens
        lengths = torch.randint(seq_len // 4, seq_len, (batch,), device=device)
        attention_mask = (torch.arange(seq_len, device=device) < lengths[:, None]).long()
        input_ids = input_ids * attention_mask
    return {"input_ids": input_ids, "attention_mask": attention_mask}


def sequence_output(
    model: BertForPreTraining, batch: dict[str, torch.Tensor], backend: SDPBackend, dtype: torch.dtype
) -> torch.Tensor:
    model.zero_grad(set_to_none=True)
    device = batch["input_ids"].device.type
    with sdpa_kernel([backend]), torch.autocast(device, dtype=dtype, enabled=dtype != torch.float32):
        output, _ = model.bert(**batch)
        output.float().square().mean().backward()
    return output.float()


def check_values(
    fused: torch.Tensor, reference: torch.Tensor, math: torch.Tensor, real: torch.Tensor, dtype: torch.dtype
) -> str:
    """Raises AssertionError when `fused` (run in `dtype`) is further from the float32 `reference` than twice
    the math kernel in that dtype (`math`) plus its slack, at the `real` positions; else the figures."""
    own_rounding = (math - reference)[real].abs().max().item()
    tolerance = 2 * own_rounding + SLACK[dtype]
    torch.testing.assert_close(fused[real], reference[real], rtol=0, atol=tolerance)
    difference = (fused - reference)[real].abs().max().item()
    return f"max |difference| {difference:.3g} to the padded float32 math kernel (tolerance {tolerance:.3g})"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    parser.add_argument("--dtype", choices=list(DTYPES), default="bf16", help="autocast dtype (fp32: none)")
    parser.add_argument("--preset", default="base")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seq-len", type=int, default=512)
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    device, dtype = args.device, DTYPES[args.dtype]
    torch.manual_seed(0)
    config = BertConfig.from_preset(args.preset, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    models = {
        name: BertForPreTraining(dataclasses.replace(config, **changes)).to(device).train()
        for name, changes in {
            "sdpa": {},
            "varlen": {"unpadded_attention": "varlen"},
            "padded": {"unpad": False},
        }.items()
    }
    for model in models.values():
        model.load_state_dict(models["sdpa"].state_dict())
    print(torch.cuda.get_device_name() if device == "cuda" else "cpu", "torch", torch.__version__, args.dtype)
    checks = (
        ("dense, no padding", "sdpa", SDPBackend.FLASH_ATTENTION, False),
        ("unpadded, nested tensors", "sdpa", SDPBackend.FLASH_ATTENTION, True),
        ("unpadded, nested tensors", "sdpa", SDPBackend.EFFICIENT_ATTENTION, True),
        ("unpadded, varlen_attn", "varlen", SDPBackend.MATH, True),  # its own flash call; SDPA unused
    )
    wrong = []
    for label, name, backend, padded in checks:
        batch = make_batch(config.vocab_size, args.batch, args.seq_len, padded, device)
        try:
            fused = sequence_output(models[name], batch, backend, dtype)
        except (RuntimeError, ImportError) as error:  # ImportError: a torch without varlen_attn
            print(f"{label} ({backend.name}): not available: {str(error).splitlines()[0]}")
            continue
        reference = sequence_output(models["padded"], batch, SDPBackend.MATH, torch.float32)
        math = sequence_output(models["padded"], batch, SDPBackend.MATH, dtype)
        try:
            figures = check_values(fused, reference, math, batch["attention_mask"].bool(), dtype)
        except AssertionError as error:
            print(f"{label} ({backend.name}): WRONG VALUES: {error}")
            wrong.append(f"{label} ({backend.name})")
            continue
        print(f"{label} ({backend.name}): ok; {figures}")

    dropout = (
        BertForPreTraining(dataclasses.replace(config, attention_probs_dropout_prob=0.1)).to(device).train()
    )
    dropout.load_state_dict(models["sdpa"].state_dict())
    batch = make_batch(config.vocab_size, args.batch, args.seq_len, True, device)
    with torch.no_grad(), torch.autocast(device, dtype=dtype, enabled=dtype != torch.float32):
        first, second = (dropout.bert(**batch)[0].float() for _ in range(2))
        evaluated = dropout.eval().bert(**batch)[0].float()
    real = batch["attention_mask"].bool()
    print(
        "unpadded, nested tensors, attention dropout 0.1: "
        f"two training passes differ by {(first - second)[real].abs().max().item():.3g}, "
        f"a training pass from eval by {(first - evaluated)[real].abs().max().item():.3g} (0: no dropout)"
    )
    if wrong:
        raise SystemExit(f"wrong values from: {', '.join(wrong)}")


if __name__ == "__main__":
    main()
