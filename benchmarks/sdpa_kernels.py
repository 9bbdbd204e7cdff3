"""Which fused attention kernels our BERT reaches on a GPU in bf16 (a check to run on a GPU, not a test).

Runs forward and backward under bf16 autocast of the `base` preset with SDPA restricted to one kernel at a
time: flash on a batch without padding (the model then passes no mask), memory-efficient on a padded batch.
A kernel that cannot serve the call raises, so "ok" means the kernel ran. Each result is compared with the
math kernel on the same weights and batch.

    python benchmarks/sdpa_kernels.py
"""

from __future__ import annotations

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
    model = BertForPreTraining(config).cuda().train()
    print(torch.cuda.get_device_name(), "torch", torch.__version__)
    for backend, padded in ((SDPBackend.FLASH_ATTENTION, False), (SDPBackend.EFFICIENT_ATTENTION, True)):
        batch = make_batch(config.vocab_size, 16, 512, padded)
        try:
            fused = sequence_output(model, batch, backend)
        except RuntimeError as error:
            print(f"{backend.name} (padded={padded}): FAILED: {str(error).splitlines()[0]}")
            continue
        reference = sequence_output(model, batch, SDPBackend.MATH)
        real = batch["attention_mask"].bool()
        difference = (fused - reference)[real].abs().max().item()
        print(f"{backend.name} (padded={padded}): ok; max |difference| to the math kernel {difference:.3g}")


if __name__ == "__main__":
    main()
