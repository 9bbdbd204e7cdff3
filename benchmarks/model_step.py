"""Speed of one BERT pretraining step (forward, backward, AdamW): ours against transformers'.

Both models get the same config, batch, sequence length, dtype and threads, in one process; their steps
alternate, and each reports the median of `--steps` timed steps after one warm-up step. Printed per
(preset, seq): tokens/s of each, the ratio, our achieved model FLOP/s and its share (MFU) of the machine's
matmul peak, measured here with a large matmul in the same dtype.

Model FLOPs per step (matmuls only; the backward pass costs twice the forward, so a step is 3x forward):

    forward = T * L * (8*H^2 + 4*H*I + 4*S*H)     Q, K, V, output projections; MLP; scores and weighted sum
            + N * (2*H^2 + 2*H*V)                 MLM transform and vocabulary projection, labelled positions
            + B * (2*H^2 + 4*H)                   pooler and NSP head
    step    = 3 * forward

with B batch size, S sequence length, T = B*S tokens, L layers, H hidden size, I intermediate size,
V vocabulary size and N the number of labelled (masked) positions. Embedding lookups, norms, softmax and
elementwise work are not counted. This is the work BERT pretraining needs; the same count is credited to
`transformers.BertForPreTraining`, whose MLM head also runs at the unlabelled positions.

    python benchmarks/model_step.py                                   # CPU, fp32: mini and small, seq 128
    python benchmarks/model_step.py --device cuda --dtype bf16 --presets base --seq 512 --batch 16
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time
from collections.abc import Callable

import torch
import transformers

from model import IGNORE_INDEX, PRESETS, BertConfig, BertForPreTraining, compile_model

MASKED_FRACTION = 0.15
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def model_flops_per_step(config: BertConfig, batch_size: int, seq_len: int, labelled: int) -> float:
    hidden, inter, tokens = config.hidden_size, config.intermediate_size, batch_size * seq_len
    encoder = tokens * config.num_hidden_layers * (8 * hidden**2 + 4 * hidden * inter + 4 * seq_len * hidden)
    mlm = labelled * (2 * hidden**2 + 2 * hidden * config.vocab_size)
    nsp = batch_size * (2 * hidden**2 + 4 * hidden)
    return 3.0 * (encoder + mlm + nsp)


def make_batch(config: BertConfig, batch_size: int, seq_len: int, device: str) -> dict[str, torch.Tensor]:
    """Two segments per row, no padding, round(15%) of the positions of each row labelled."""
    input_ids = torch.randint(5, config.vocab_size, (batch_size, seq_len))
    token_type_ids = (torch.arange(seq_len) >= seq_len // 2).long().expand(batch_size, seq_len).contiguous()
    picked = torch.rand(batch_size, seq_len).argsort(dim=1)[:, : round(MASKED_FRACTION * seq_len)]
    mlm_labels = torch.full((batch_size, seq_len), IGNORE_INDEX)
    mlm_labels.scatter_(1, picked, input_ids.gather(1, picked))
    batch = {
        "input_ids": input_ids,
        "token_type_ids": token_type_ids,
        "attention_mask": torch.ones(batch_size, seq_len, dtype=torch.long),
        "mlm_labels": mlm_labels,
        "next_sentence_label": torch.randint(0, 2, (batch_size,)),
    }
    return {key: value.to(device) for key, value in batch.items()}


def synchronize(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def measure_matmul_peak(device: str, dtype: torch.dtype) -> float:
    """FLOP/s of the best of several large square matmuls in `dtype`."""
    size = 8192 if device == "cuda" else 2048
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    times = []
    for _ in range(6):
        synchronize(device)
        start = time.perf_counter()
        for _ in range(10 if device == "cuda" else 1):
            a @ b
        synchronize(device)
        times.append((time.perf_counter() - start) / (10 if device == "cuda" else 1))
    return 2 * size**3 / min(times[1:])


def make_step(
    model: torch.nn.Module, batch: dict[str, torch.Tensor], ours: bool, device: str, dtype: str
) -> Callable[[], None]:
    """A closure doing one training step; both models use the same AdamW (fused where the device has it)."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    if ours:
        inputs = batch
    else:
        inputs = {k: v for k, v in batch.items() if k != "mlm_labels"}
        inputs["labels"] = batch["mlm_labels"]

    def step() -> None:
        bf16 = torch.autocast(device_type=device, dtype=torch.bfloat16)
        with bf16 if dtype == "bf16" else contextlib.nullcontext():
            loss = model(**inputs).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def timed(step: Callable[[], None], device: str) -> float:
    synchronize(device)
    start = time.perf_counter()
    step()
    synchronize(device)
    return time.perf_counter() - start


def compare(preset: str, args: argparse.Namespace, peak: float) -> None:
    config = BertConfig.from_preset(preset, vocab_size=args.vocab_size)
    batch = make_batch(config, args.batch, args.seq, args.device)
    torch.manual_seed(0)
    ours = BertForPreTraining(config).to(args.device).train()
    hf_config = transformers.BertConfig(**config.to_hf_dict(), attn_implementation="sdpa")
    reference = transformers.BertForPreTraining(hf_config).to(args.device).train()
    if args.compile:  # the same regional compilation for both: each encoder layer
        compile_model(ours)
        for layer in reference.bert.encoder.layer:
            layer.compile()

    steps = {
        "ours": make_step(ours, batch, True, args.device, args.dtype),
        "transformers": make_step(reference, batch, False, args.device, args.dtype),
    }
    times: dict[str, list[float]] = {name: [] for name in steps}
    for step in steps.values():  # warm-up: allocator, kernels, optimizer state
        timed(step, args.device)
    for _ in range(args.steps):
        for name, step in steps.items():
            times[name].append(timed(step, args.device))

    tokens = args.batch * args.seq
    labelled = int((batch["mlm_labels"] != IGNORE_INDEX).sum())
    flops = model_flops_per_step(config, args.batch, args.seq, labelled)
    ours_time, ref_time = statistics.median(times["ours"]), statistics.median(times["transformers"])
    ours_flops, ref_flops = flops / ours_time, flops / ref_time
    print(
        f"{preset} seq {args.seq} batch {args.batch} {args.dtype}{' compiled' if args.compile else ''}: "
        f"ours {tokens / ours_time:,.0f} tok/s, transformers {tokens / ref_time:,.0f} tok/s, "
        f"ratio {ref_time / ours_time:.2f}x | "
        f"ours {ours_flops / 1e12:.3f} TFLOP/s, MFU {ours_flops / peak:.1%} "
        f"(transformers {ref_flops / 1e12:.3f} TFLOP/s, MFU {ref_flops / peak:.1%})",
        flush=True,
    )


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--presets", nargs="+", default=["mini", "small"], choices=list(PRESETS))
    parser.add_argument("--seq", type=int, default=128, help="sequence length")
    parser.add_argument("--batch", type=int, default=32, help="sequences per step")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per model (after one warm-up step)")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--dtype", choices=list(DTYPES), default="fp32", help="bf16 runs both under autocast")
    parser.add_argument("--vocab-size", type=int, default=30522)
    parser.add_argument("--compile", action="store_true", help="torch.compile the encoder layers of both")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    if args.device == "cuda":
        machine = torch.cuda.get_device_name()
    else:
        machine = f"CPU, {torch.get_num_threads()} threads"
    peak = measure_matmul_peak(args.device, DTYPES[args.dtype])
    print(
        f"{machine}; torch {torch.__version__}, transformers {transformers.__version__}; "
        f"measured {args.dtype} matmul peak {peak / 1e12:.3f} TFLOP/s",
        flush=True,
    )
    for preset in args.presets:
        compare(preset, args, peak)


if __name__ == "__main__":
    main()
