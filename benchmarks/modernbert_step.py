"""Speed of one ModernBERT MLM training step (forward, backward, AdamW): ours against transformers'.

Ours is `model.modernbert.ModernBertForPreTraining` as it trains (a batch with padding unpadded, attention
per sequence with its sliding window, the MLM head on the labelled positions only); the peer is
`transformers.ModernBertForMaskedLM` with its default attention here (printed) and, if that is not "sdpa",
with "sdpa" as well: what its docs advise where flash-attention is not at hand (CPU). Both start from the
same weights: transformers initialises its model and saves it, ours loads that folder with
`ModernBertForPreTraining.from_hf`; before timing, the losses on the batch must agree (rtol 1e-4 in fp32,
2e-2 in bf16). Dropout is 0 in ModernBERT's config, so the timed steps compute what was checked.

Each round runs `--steps` steps of every model and keeps the median; the order is reversed every other round.
Printed per model: real (non-padding) tokens/s, median over `--rounds` rounds (min-max), and ours against
each peer (the ratio of each round, median (min-max)). Workloads by default, the `mini` preset with sequences
of 512 (four times the 128-token local window):
- full: 4 x 512, no padding;
- half: 8 x 512 with real lengths evenly spread from 64 to 448: half the positions padding, the same 2,048
  real tokens.

    python benchmarks/modernbert_step.py                          # CPU, fp32: mini, full and half
    python benchmarks/modernbert_step.py --device cuda --dtype bf16 --presets base --workloads half:32x1024
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from collections.abc import Callable

import torch
import transformers
from step_batches import make_batch, parse_workload
from step_timing import check_losses_agree, make_step, median_and_spread, time_rounds

from model.modernbert import PRESETS, ModernBertConfig, ModernBertForPreTraining
from model.modernbert_hf import config_to_hf

OURS = "ours"


def build_models(
    config: ModernBertConfig, batch: dict[str, torch.Tensor], args: argparse.Namespace
) -> dict[str, tuple[torch.nn.Module, Callable[[], torch.Tensor]]]:
    """The peer (default attention, and sdpa if that differs) and ours, with transformers' initial weights."""
    hf_config = transformers.ModernBertConfig(**config_to_hf(config))
    torch.manual_seed(0)
    default_peer = transformers.ModernBertForMaskedLM(hf_config)
    peers = {f"transformers ({default_peer.config._attn_implementation})": default_peer}
    with tempfile.TemporaryDirectory() as folder:
        default_peer.save_pretrained(folder)
        if default_peer.config._attn_implementation != "sdpa":
            peers["transformers (sdpa)"] = transformers.ModernBertForMaskedLM.from_pretrained(
                folder, attn_implementation="sdpa"
            )
        ours = ModernBertForPreTraining.from_hf(folder)
    peer_inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    peer_inputs["labels"] = batch["mlm_labels"]
    models: dict[str, tuple[torch.nn.Module, Callable[[], torch.Tensor]]] = {
        name: (peer, lambda peer=peer: peer(**peer_inputs).loss) for name, peer in peers.items()
    }
    models[OURS] = (ours, lambda: ours(**batch).loss)
    for model, _ in models.values():
        model.to(args.device).train()
    return models


def compare(preset: str, workload: tuple[str, int, int], args: argparse.Namespace) -> None:
    padding, batch_size, seq_len = workload
    config = ModernBertConfig.from_preset(preset, vocab_size=args.vocab_size)
    batch = make_batch(config.vocab_size, batch_size, seq_len, padding, args.device)
    models = build_models(config, batch, args)
    loss = check_losses_agree(models, args.dtype, OURS)
    steps = {
        name: make_step(model.parameters(), loss_of, args.device, args.dtype)
        for name, (model, loss_of) in models.items()
    }
    seconds = time_rounds(steps, args.rounds, args.steps, args.device)

    real_tokens = int(batch["attention_mask"].sum())
    print(
        f"\n{preset} {padding} {batch_size}x{seq_len} ({1 - real_tokens / (batch_size * seq_len):.0%} "
        f"padding, window {config.local_attention}) {args.dtype}; loss {loss:.4f} agrees; real tokens/s, "
        f"median of {args.rounds} rounds (min-max):",
        flush=True,
    )
    for name, times in seconds.items():
        print(f"  {name:<22} {median_and_spread([real_tokens / t for t in times]):>26} tok/s", flush=True)
    for name in seconds:
        if name != OURS:
            ratios = [peer / ours for peer, ours in zip(seconds[name], seconds[OURS], strict=True)]
            spread = f"({min(ratios):.2f}-{max(ratios):.2f})"
            print(f"  ours / {name}: x{statistics.median(ratios):.2f} {spread}", flush=True)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--presets", nargs="+", default=["mini"], choices=list(PRESETS))
    parser.add_argument(
        "--workloads",
        nargs="+",
        type=parse_workload,
        default=[("full", 4, 512), ("half", 8, 512)],
        help="PADDING:BATCHxSEQ, PADDING full (no padding) or half (lengths seq/8..7seq/8)",
    )
    parser.add_argument(
        "--rounds", type=int, default=3, help="rounds, the models' order reversed every other"
    )
    parser.add_argument("--steps", type=int, default=3, help="timed steps per model and round (median kept)")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32", help="bf16 runs under autocast")
    parser.add_argument("--vocab-size", type=int, default=50368, help="ModernBERT's tokenizer has 50,368")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    transformers.logging.disable_progress_bar()
    machine = (
        torch.cuda.get_device_name() if args.device == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    )
    print(f"{machine}; torch {torch.__version__}, transformers {transformers.__version__}", flush=True)
    for preset in args.presets:
        for workload in args.workloads:
            compare(preset, workload, args)


if __name__ == "__main__":
    main()
