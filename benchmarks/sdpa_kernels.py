"""Which attention kernels our BERT reaches on a GPU in bf16 (a check to run on a GPU, not a test).

Forward and backward of the `base` preset under bf16 autocast, on a batch without padding (the dense path:
flash, no mask) and on one with padding (the unpadded path: nested tensors through SDPA, or varlen_attn),
with SDPA restricted to one kernel at a time. A kernel that cannot serve the call raises, so "ok" means it
ran. Each result is compared at the real positions with the padded model (`unpad=False`) under the math
kernel, same weights and batch, dropout off; then the unpadded path runs once in training mode with
attention dropout 0.1, which only the nested-tensor path applies.

    python benchmarks/sdpa_kernels.py
"""

from __future__ import annotations

import dataclasses

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from model import BertConfig, BertForPreTraining


def make_batch(vocab_size: int, batch: int, seq_len: int, padded: bool) -> dict[str, torch.Tensor]:
    input_ids = torch.randint(5, vocab_size, (batch, seq_len), device="cuda")
    attention_mask = torch.ones(batch, seq_len, dtype=torch.long, device="cuda")
    if padded:  # each row keeps a different number of real tokens
        lengths = torch.randint(seq_len // 4, seq_len, (batch,), device="cuda")
        attention_mask = (torch.arange(seq_len, device="cuda") < lengths[:, None]).long()
        input_ids = input_ids * attention_mask
    return {"input_ids": input_ids, "attention_mask": attention_mask}


def sequence_output(
    model: BertForPreTraining, batch: dict[str, torch.Tensor], backend: SDPBackend
) -> torch.Tensor:
    model.zero_grad(set_to_none=True)
    with sdpa_kernel([backend]), torch.autocast("cuda", dtype=torch.bfloat16):
        output, _ = model.bert(**batch)
        output.float().square().mean().backward()
    return output.float()


def main() -> None:
    torch.manual_seed(0)
    config = BertConfig.from_preset("base", hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    models = {
        name: BertForPreTraining(dataclasses.replace(config, **changes)).cuda().train()
        for name, changes in {
            "sdpa": {},
            "varlen": {"unpadded_attention": "varlen"},
            "padded": {"unpad": False},
        }.items()
    }
    for model in models.values():
        model.load_state_dict(models["sdpa"].state_dict())
    print(torch.cuda.get_device_name(), "torch", torch.__version__)
    checks = (
        ("dense, no padding", "sdpa", SDPBackend.FLASH_ATTENTION, False),
        ("unpadded, nested tensors", "sdpa", SDPBackend.FLASH_ATTENTION, True),
        ("unpadded, nested tensors", "sdpa", SDPBackend.EFFICIENT_ATTENTION, True),
        ("unpadded, varlen_attn", "varlen", SDPBackend.MATH, True),  # its own flash call; SDPA unused
    )
    for label, name, backend, padded in checks:
        batch = make_batch(config.vocab_size, 16, 512, padded)
        try:
            fused = sequence_output(models[name], batch, backend)
        except (RuntimeError, ImportError) as error:  # ImportError: a torch without varlen_attn
            print(f"{label} ({backend.name}): FAILED: {str(error).splitlines()[0]}")
            continue
        reference = sequence_output(models["padded"], batch, SDPBackend.MATH)
        real = batch["attention_mask"].bool()
        difference = (fused - reference)[real].abs().max().item()
        print(f"{label} ({backend.name}): ok; max |difference| to the padded math kernel {difference:.3g}")

    dropout = BertForPreTraining(dataclasses.replace(config, attention_probs_dropout_prob=0.1)).cuda().train()
    dropout.load_state_dict(models["sdpa"].state_dict())
    batch = make_batch(config.vocab_size, 16, 512, padded=True)
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        first, second = (dropout.bert(**batch)[0].float() for _ in range(2))
        evaluated = dropout.eval().bert(**batch)[0].float()
    real = batch["attention_mask"].bool()
    print(
        "unpadded, nested tensors, attention dropout 0.1: "
        f"two training passes differ by {(first - second)[real].abs().max().item():.3g}, "
        f"a training pass from eval by {(first - evaluated)[real].abs().max().item():.3g} (0: no dropout)"
    )


if __name__ == "__main__":
    main()
