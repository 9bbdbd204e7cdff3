"""Speed of one BERT pretraining step (forward, backward, AdamW): ours against transformers', by saving.

Four rows per workload, each a step on the same batch from the same initial weights (ours saved with
`save_hf` and loaded by `transformers.BertForPreTraining.from_pretrained`); before timing, every row's loss
on that batch (dropout off) must agree with transformers' (rtol 1e-4 in fp32, 2e-2 in bf16):
  (a) transformers: `BertForPreTraining` with its fastest attention here (`attn_implementation="sdpa"`),
      every position computed and the MLM head on every position, as HF's run_mlm.py runs a model;
  (b) ours, the same work: padding computed (`unpad=False`) and the MLM head on every position (a wrapper
      here, not a model switch), so (b)/(a) is the implementation alone;
  (c) ours unpadded (the encoder on the real tokens only), the head still on every real position:
      (c)/(b) is what skipping padding saves;
  (d) ours as it trains: unpadded, the MLM head on the labelled positions only: (d)/(c) is that saving.
The timed steps run in train mode (dropout 0.1 in all). Each round runs `--steps` steps of every row and
keeps the median; the rows' order is reversed every other round; printed per row: real (non-padding)
tokens/s, median over `--rounds` rounds (min-max), its ratio to the row above (the ratio of each round,
median (min-max)), and the achieved model FLOP/s as a share (MFU) of the peak: on a GPU in the table of
`orchestrator.train.throughput` its datasheet dense bf16 peak, else a large matmul measured here.
Workloads by default:
- full: 32 x 128, no padding ((c) is then (b): nothing to skip);
- half: 8 x 512 with real lengths evenly spread from 1/8 to 7/8 of the sequence (64..448): half padding,
  about what phase 2 of BERT sees on Wikipedia-like text.

Model FLOPs per step (`BertConfig.training_flops`: matmuls only, the backward pass twice the forward), the
same count credited to every row, whatever it computes beyond it:

    step    = 3 * forward
    forward = L * (T * (8*H^2 + 4*H*I) + 4*H * sum_b len_b^2)   Q, K, V, output projections; MLP; attention
            + N * (2*H^2 + 2*H*V)                               MLM transform and vocabulary projection
            + B * (2*H^2 + 4*H)                                 pooler and NSP head

with L layers, H hidden size, I intermediate size, V vocabulary size, T real tokens, len_b the real length
of sequence b, N labelled (masked) positions and B sequences.

    python benchmarks/model_step.py                                   # CPU, fp32: mini, full and half
    python benchmarks/model_step.py --device cuda --dtype bf16 --presets base --workloads half:64x512
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import tempfile
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
import transformers
from step_batches import make_batch, parse_workload
from step_timing import check_losses_agree, make_step, median_and_spread, synchronize, time_rounds

from model import IGNORE_INDEX, PRESETS, BertConfig, BertForPreTraining, compile_model
from orchestrator.train.throughput import dense_bf16_peak_flops

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
ROWS = (
    "(a) transformers, sdpa, padded, head on all",
    "(b) ours padded, head on all",
    "(c) ours unpadded, head on all",
    "(d) ours unpadded, head on labelled",
)


def step_flops(config: BertConfig, batch: dict[str, torch.Tensor]) -> float:
    lengths = batch["attention_mask"].sum(dim=1).double()
    return config.training_flops(
        tokens=float(lengths.sum()),
        squared_lengths=float(lengths.square().sum()),
        labelled=float((batch["mlm_labels"] != IGNORE_INDEX).sum()),
        sequences=float(lengths.numel()),
    )


def measure_matmul_peak(device: str, dtype: torch.dtype) -> float:
    """FLOP/s of the best of several large square matmuls in `dtype`."""
    size = 8192 if device == "cuda" else 2048
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    repeats = 10 if device == "cuda" else 1
    times = []
    for _ in range(6):
        synchronize(device)
        start = time.perf_counter()
        for _ in range(repeats):
            a @ b
        synchronize(device)
        times.append((time.perf_counter() - start) / repeats)
    return 2 * size**3 / min(times[1:])


def loss_with_head_on_every_position(
    model: BertForPreTraining, batch: dict[str, torch.Tensor]
) -> torch.Tensor:
    """Our encoder (padded or unpadded as its config says) with the MLM head on every position it computed,
    as transformers runs it: the mean cross-entropy over the labelled ones, plus NSP."""
    hidden_states, layout = model.bert.encode(
        batch["input_ids"], batch["token_type_ids"], batch["attention_mask"]
    )  # (B, S, H) or (T, H)
    labels = batch["mlm_labels"].reshape(-1) if layout is None else layout.unpad(batch["mlm_labels"])
    logits = model.mlm_logits(hidden_states.reshape(-1, hidden_states.shape[-1]))  # (B*S or T, V)
    mlm_loss = F.cross_entropy(logits, labels, ignore_index=IGNORE_INDEX)
    nsp_logits = model.nsp_head(model.bert.pool(hidden_states, layout))  # (B, 2)
    return mlm_loss + F.cross_entropy(nsp_logits, batch["next_sentence_label"])


def build_rows(
    config: BertConfig, batch: dict[str, torch.Tensor], args: argparse.Namespace
) -> dict[str, tuple[torch.nn.Module, Callable[[], torch.Tensor]]]:
    """Each row's model and its loss on `batch`, all from the same initial weights."""
    torch.manual_seed(0)
    ours = BertForPreTraining(config)
    padded = BertForPreTraining(dataclasses.replace(config, unpad=False))
    padded.load_state_dict(ours.state_dict())
    unpadded = BertForPreTraining(config)
    unpadded.load_state_dict(ours.state_dict())
    with tempfile.TemporaryDirectory() as folder:
        ours.save_hf(folder)
        peer = transformers.BertForPreTraining.from_pretrained(folder, attn_implementation="sdpa")
    peer_inputs = {k: v for k, v in batch.items() if k != "mlm_labels"} | {"labels": batch["mlm_labels"]}
    rows = {
        ROWS[0]: (peer, lambda: peer(**peer_inputs).loss),
        ROWS[1]: (padded, lambda: loss_with_head_on_every_position(padded, batch)),
        ROWS[2]: (unpadded, lambda: loss_with_head_on_every_position(unpadded, batch)),
        ROWS[3]: (ours, lambda: ours(**batch).loss),
    }
    for name, (model, _) in rows.items():
        model.to(args.device)
        if args.compile and name == ROWS[0]:  # the same regional compilation: each encoder layer
            for layer in model.bert.encoder.layer:
                layer.compile()
        elif args.compile:
            compile_model(model)
    return rows


def compare(preset: str, workload: tuple[str, int, int], args: argparse.Namespace, peak: float) -> None:
    padding, batch_size, seq_len = workload
    config = BertConfig.from_preset(preset, vocab_size=args.vocab_size)
    batch = make_batch(config.vocab_size, batch_size, seq_len, padding, args.device)
    rows = build_rows(config, batch, args)
    loss = check_losses_agree(rows, args.dtype, ROWS[0])
    steps = {
        name: make_step(model.parameters(), loss_of, args.device, args.dtype)
        for name, (model, loss_of) in rows.items()
    }
    seconds = time_rounds(steps, args.rounds, args.steps, args.device)

    real_tokens = int(batch["attention_mask"].sum())
    flops = step_flops(config, batch)
    print(
        f"\n{preset} {padding} {batch_size}x{seq_len} "
        f"({1 - real_tokens / (batch_size * seq_len):.0%} padding) {args.dtype}"
        f"{' compiled' if args.compile else ''}; loss {loss:.4f} agrees on every row; "
        f"real tokens/s, median of {args.rounds} rounds (min-max):",
        flush=True,
    )
    previous = None
    for name, times in seconds.items():
        rates = [real_tokens / t for t in times]
        mfu = flops / statistics.median(times) / peak
        line = f"  {name:<44} {median_and_spread(rates):>26} tok/s  MFU {mfu:6.1%}"
        if previous is not None:
            ratios = [before / now for before, now in zip(seconds[previous], times, strict=True)]
            line += (
                f"  x{statistics.median(ratios):.2f} ({min(ratios):.2f}-{max(ratios):.2f}) of the row above"
            )
        print(line, flush=True)
        previous = name
    ratios = [peer / ours for peer, ours in zip(seconds[ROWS[0]], seconds[ROWS[3]], strict=True)]
    print(f"  (d)/(a): x{statistics.median(ratios):.2f} ({min(ratios):.2f}-{max(ratios):.2f})", flush=True)


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
    parser.add_argument("--rounds", type=int, default=3, help="rounds, the rows' order reversed every other")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per row and round (median kept)")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--dtype", choices=list(DTYPES), default="fp32", help="bf16 runs all under autocast")
    parser.add_argument("--vocab-size", type=int, default=30522)
    parser.add_argument("--compile", action="store_true", help="torch.compile the encoder layers of all")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    transformers.logging.disable_progress_bar()
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
