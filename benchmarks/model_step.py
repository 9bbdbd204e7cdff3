"""Speed of one BERT pretraining step (forward, backward, AdamW): ours against transformers'.

All models get the same config, batch, dtype and threads, in one process; their steps alternate, and each
reports the median of `--steps` timed steps after one warm-up step. Two workloads by default:
- full: 32 x 128, no padding;
- half: 8 x 512 with real lengths evenly spread from 1/8 to 7/8 of the sequence (64..448): half padding,
  about what phase 2 of BERT sees on Wikipedia-like text.
On a padded workload ours runs twice: unpadded (the default) and padded (`unpad=False`, every position
computed, as transformers does). Printed per (preset, workload): real (non-padding) tokens/s of each, the
ratios, and the achieved model FLOP/s with its share (MFU) of the peak: on a GPU in the table of
`orchestrator.train.throughput` its datasheet dense bf16 peak, else a large matmul measured here in the
same dtype.

Model FLOPs per step (`BertConfig.training_flops`: matmuls only, the backward pass twice the forward):

    step    = 3 * forward
    forward = L * (T * (8*H^2 + 4*H*I) + 4*H * sum_b len_b^2)   Q, K, V, output projections; MLP; attention
            + N * (2*H^2 + 2*H*V)                               MLM transform and vocabulary projection
            + B * (2*H^2 + 4*H)                                 pooler and NSP head

with L layers, H hidden size, I intermediate size, V vocabulary size, T real tokens, len_b the real length
of sequence b, N labelled (masked) positions and B sequences. Embedding lookups, norms, softmax,
elementwise work and anything done on padding are not counted. This is the work BERT pretraining needs; the
same count is credited to every model, whatever it computes beyond it.

    python benchmarks/model_step.py                                   # CPU, fp32: mini, full and half
    python benchmarks/model_step.py --device cuda --dtype bf16 --presets base --workloads half:64x512
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import statistics
import time
from collections.abc import Callable

import torch
import transformers

from model import IGNORE_INDEX, PRESETS, BertConfig, BertForPreTraining, compile_model
from orchestrator.train.throughput import dense_bf16_peak_flops

MASKED_FRACTION = 0.15
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
PADDINGS = ("full", "half")


def parse_workload(text: str) -> tuple[str, int, int]:
    """'half:8x512' -> ('half', 8, 512)."""
    padding, _, shape = text.partition(":")
    batch, _, seq = shape.partition("x")
    if padding not in PADDINGS or not batch.isdigit() or not seq.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r}: expected PADDING:BATCHxSEQ, PADDING one of {PADDINGS}")
    return padding, int(batch), int(seq)


def make_batch(
    config: BertConfig, batch_size: int, seq_len: int, padding: str, device: str
) -> dict[str, torch.Tensor]:
    """Two segments per row, round(15%) of each row's real positions labelled; with padding "half", real
    lengths evenly spread from seq/8 to 7*seq/8."""
    if padding == "half":
        lengths = torch.linspace(seq_len / 8, 7 * seq_len / 8, batch_size).round().long()
    else:
        lengths = torch.full((batch_size,), seq_len)
    attention_mask = (torch.arange(seq_len) < lengths[:, None]).long()
    input_ids = torch.randint(5, config.vocab_size, (batch_size, seq_len)) * attention_mask
    token_type_ids = ((torch.arange(seq_len) >= lengths[:, None] // 2) & attention_mask.bool()).long()
    scores = torch.rand(batch_size, seq_len).masked_fill(attention_mask == 0, 2.0)  # padding sorts last
    mlm_labels = torch.full((batch_size, seq_len), IGNORE_INDEX)
    for row, length in enumerate(lengths.tolist()):
        picked = scores[row].argsort()[: round(MASKED_FRACTION * length)]
        mlm_labels[row, picked] = input_ids[row, picked]
    batch = {
        "input_ids": input_ids,
        "token_type_ids": token_type_ids,
        "attention_mask": attention_mask,
        "mlm_labels": mlm_labels,
        "next_sentence_label": torch.randint(0, 2, (batch_size,)),
    }
    return {key: value.to(device) for key, value in batch.items()}


def step_flops(config: BertConfig, batch: dict[str, torch.Tensor]) -> float:
    lengths = batch["attention_mask"].sum(dim=1).double()
    return config.training_flops(
        tokens=float(lengths.sum()),
        squared_lengths=float(lengths.square().sum()),
        labelled=float((batch["mlm_labels"] != IGNORE_INDEX).sum()),
        sequences=float(lengths.numel()),
    )


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
    """A closure doing one training step; every model uses the same AdamW (fused where the device has it)."""
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


def build_models(config: BertConfig, padding: str, args: argparse.Namespace) -> dict[str, torch.nn.Module]:
    """Ours (and ours padded, on a padded workload) and transformers', with the same initial weights."""
    torch.manual_seed(0)
    models = {"ours": BertForPreTraining(config)}
    if padding != "full":
        models["ours padded"] = BertForPreTraining(dataclasses.replace(config, unpad=False))
        models["ours padded"].load_state_dict(models["ours"].state_dict())
    hf_config = transformers.BertConfig(**config.to_hf_dict(), attn_implementation="sdpa")
    models["transformers"] = transformers.BertForPreTraining(hf_config)
    for name, model in models.items():
        model.to(args.device).train()
        if args.compile and name == "transformers":  # the same regional compilation: each encoder layer
            for layer in model.bert.encoder.layer:
                layer.compile()
        elif args.compile:
            compile_model(model)
    return models


def compare(preset: str, workload: tuple[str, int, int], args: argparse.Namespace, peak: float) -> None:
    padding, batch_size, seq_len = workload
    config = BertConfig.from_preset(preset, vocab_size=args.vocab_size)
    batch = make_batch(config, batch_size, seq_len, padding, args.device)
    models = build_models(config, padding, args)
    steps = {
        name: make_step(model, batch, name != "transformers", args.device, args.dtype)
        for name, model in models.items()
    }
    times: dict[str, list[float]] = {name: [] for name in steps}
    for step in steps.values():  # warm-up: allocator, kernels, optimizer state, compilation
        timed(step, args.device)
    for _ in range(args.steps):
        for name, step in steps.items():
            times[name].append(timed(step, args.device))

    real_tokens = int(batch["attention_mask"].sum())
    flops = step_flops(config, batch)
    median = {name: statistics.median(values) for name, values in times.items()}
    figures = ", ".join(
        f"{name} {real_tokens / seconds:,.0f} tok/s (MFU {flops / seconds / peak:.1%})"
        for name, seconds in median.items()
    )
    ratios = [f"ours/transformers {median['transformers'] / median['ours']:.2f}x"]
    if "ours padded" in median:
        ratios.append(f"ours/ours padded {median['ours padded'] / median['ours']:.2f}x")
    print(
        f"{preset} {padding} {batch_size}x{seq_len} ({1 - real_tokens / (batch_size * seq_len):.0%} padding) "
        f"{args.dtype}{' compiled' if args.compile else ''}: {figures} | {', '.join(ratios)}",
        flush=True,
    )


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--presets", nargs="+", default=["mini"], choices=list(PRESETS))
    parser.add_argument(
        "--workloads",
        nargs="+",
        type=parse_workload,
        default=[("full", 32, 128), ("half", 8, 512)],
        help="PADDING:BATCHxSEQ, PADDING full (no padding) or half (lengths seq/8..7seq/8)",
    )
    parser.add_argument("--steps", type=int, default=5, help="timed steps per model (after one warm-up step)")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--dtype", choices=list(DTYPES), default="fp32", help="bf16 runs all under autocast")
    parser.add_argument("--vocab-size", type=int, default=30522)
    parser.add_argument("--compile", action="store_true", help="torch.compile the encoder layers of all")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    measured = measure_matmul_peak(args.device, DTYPES[args.dtype])
    peak, source = measured, f"measured {args.dtype} matmul peak"
    if args.device == "cuda":
        machine = torch.cuda.get_device_name()
        if args.dtype == "bf16" and (datasheet := dense_bf16_peak_flops(machine)):
            peak, source = datasheet, f"datasheet dense bf16 peak (measured matmul {measured / 1e12:.0f})"
    else:
        machine = f"CPU, {torch.get_num_threads()} threads"
    print(
        f"{machine}; torch {torch.__version__}, transformers {transformers.__version__}; "
        f"MFU over the {source}: {peak / 1e12:.3f} TFLOP/s",
        flush=True,
    )
    for preset in args.presets:
        for workload in args.workloads:
            compare(preset, workload, args, peak)


if __name__ == "__main__":
    main()
