"""What a training step reports: metric names in MLflow sections, real-token throughput, padding share, NSP
metrics only with NSP on; and the console's progress line."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from model import BertConfig, BertForPreTraining
from orchestrator.config import JobConfig
from orchestrator.tracking.names import FLAT_METRICS
from orchestrator.train.checkpoints import Trainables
from orchestrator.train.metrics_window import MetricsWindow, progress_line
from orchestrator.train.optim import build_optimizer, build_scheduler
from orchestrator.train.step import TrainStep
from orchestrator.train.throughput import dense_bf16_peak_flops


def padded_batch(lengths: list[int], seq_len: int, vocab_size: int = 64) -> dict[str, torch.Tensor]:
    attention_mask = (torch.arange(seq_len) < torch.tensor(lengths)[:, None]).long()
    input_ids = torch.randint(5, vocab_size, attention_mask.shape) * attention_mask
    labels = torch.full_like(input_ids, -100)
    labels[:, 1] = input_ids[:, 1]
    return {
        "input_ids": input_ids,
        "token_type_ids": torch.zeros_like(input_ids),
        "attention_mask": attention_mask,
        "mlm_labels": labels,
        "next_sentence_label": torch.randint(0, 2, (len(lengths),)),
    }


@pytest.mark.parametrize("use_nsp", [True, False], ids=["NSP", "MLM only"])
def test_a_window_reports_real_tokens_padding_and_sectioned_names(use_nsp):
    torch.manual_seed(0)
    config = BertConfig.from_preset("tiny", vocab_size=64, num_hidden_layers=1, use_nsp=use_nsp)
    model = BertForPreTraining(config)
    job = JobConfig()
    optimizer = build_optimizer(model, job.optim)
    scheduler = build_scheduler(optimizer, job.optim, total_steps=10)
    window = MetricsWindow(torch.device("cpu"), config)
    step = TrainStep(Trainables(model, optimizer, scheduler), job.optim.max_grad_norm)
    micro_batches = [padded_batch([16, 4, 9], 16), padded_batch([3, 8], 12)]  # 40 real of 72 positions
    for _ in range(2):
        window.add(step(micro_batches))
    metrics = window.read()

    nsp = {"train/nsp_loss", "train/nsp_accuracy"}
    expected = {"train/loss", "train/mlm_loss", "train/mlm_accuracy", "optim/learning_rate"}
    expected |= {"optim/grad_norm", "perf/tokens_per_s", "perf/samples_per_s", "perf/step_time_s"}
    expected |= {"perf/padding_share"}
    assert set(metrics) == expected | (nsp if use_nsp else set())  # no MFU nor GPU memory on a CPU
    assert metrics["perf/padding_share"] == pytest.approx(1 - 40 / 72)
    elapsed = metrics["perf/step_time_s"] * 2
    assert metrics["perf/tokens_per_s"] * elapsed == pytest.approx(2 * 40)  # real tokens, not positions
    assert metrics["perf/samples_per_s"] * elapsed == pytest.approx(2 * 5)
    assert set(metrics) - {"perf/padding_share"} <= set(FLAT_METRICS.values())


def test_mfu_is_the_model_flops_over_the_peak_of_the_elapsed_time():
    config = BertConfig.from_preset("tiny", vocab_size=64, num_hidden_layers=1)
    model = BertForPreTraining(config)
    job = JobConfig()
    optimizer = build_optimizer(model, job.optim)
    scheduler = build_scheduler(optimizer, job.optim, total_steps=10)
    window = MetricsWindow(torch.device("cpu"), config)
    window.peak_flops = 1e9  # as on a GPU of the table
    batch = padded_batch([16, 4, 9], 16)
    window.add(TrainStep(Trainables(model, optimizer, scheduler), job.optim.max_grad_norm)([batch]))
    metrics = window.read()
    labelled = int((batch["mlm_labels"] != -100).sum())
    flops = config.training_flops(16 + 4 + 9, 16**2 + 4**2 + 9**2, labelled, 3)
    assert metrics["perf/mfu"] == pytest.approx(flops / (metrics["perf/step_time_s"] * 1e9))


@pytest.mark.parametrize(
    ("device_name", "peak"),
    [
        ("NVIDIA A100-SXM4-80GB", 312e12),
        ("NVIDIA A100 80GB PCIe", 312e12),
        ("NVIDIA H100 80GB HBM3", 989e12),
        ("NVIDIA H100 PCIe", 756e12),
        ("NVIDIA H100 NVL", 835e12),
        ("NVIDIA H200", 989e12),
        ("NVIDIA L4", 121e12),
        ("NVIDIA A10G", 70e12),
        ("NVIDIA L40S", None),
        ("NVIDIA A10", None),
        ("Tesla T4", None),
    ],
)
def test_the_dense_bf16_peak_of_known_gpus_and_none_for_others(device_name, peak):
    assert dense_bf16_peak_flops(device_name) == peak


def test_the_console_gets_one_short_progress_line_per_report():
    metrics = {"step": 30, "train/loss": 7.1071, "train/mlm_accuracy": 0.04, "train/nsp_accuracy": 0.53125}
    metrics |= {
        "optim/learning_rate": 1.85e-05,
        "perf/tokens_per_s": 5117.7,
        "eval/mlm_loss": 6.6933,
        "eval/perplexity": 807,
    }
    assert progress_line(metrics, 60) == (
        "step 30/60  |  loss 7.1071  mlm_acc 0.040  nsp_acc 0.531  lr 1.85e-05  5,118 tok/s  |  "
        "eval_mlm_loss 6.6933  eval_ppl 807.0"
    )
    del metrics["train/nsp_accuracy"]  # MLM only: nothing about NSP
    metrics["perf/mfu"] = 0.4123  # on a GPU with a known peak
    assert progress_line(metrics, 60) == (
        "step 30/60  |  loss 7.1071  mlm_acc 0.040  lr 1.85e-05  5,118 tok/s  MFU 41.2%  |  "
        "eval_mlm_loss 6.6933  eval_ppl 807.0"
    )
    assert progress_line({"step": 8, "eval/mlm_loss": 2.0, "eval/perplexity": 7.389}, 10) == (
        "step 8/10  |  eval_mlm_loss 2.0000  eval_ppl 7.4"
    )


def test_a_step_over_micro_batches_makes_the_update_of_one_big_batch():
    """Gradient accumulation without Ray: two micro-batches of unequal lengths and labels (each padded to
    its own longest) give the weights that one step over the whole batch gives."""
    torch.manual_seed(0)
    config = BertConfig.from_preset("tiny", vocab_size=64, num_hidden_layers=1, hidden_dropout_prob=0.0)
    config = dataclasses.replace(config, attention_probs_dropout_prob=0.0)
    whole = padded_batch([16, 4, 9, 12], 16)
    whole["mlm_labels"][0, 2:6] = whole["input_ids"][0, 2:6]  # a row with more labels than the others
    parts = [
        {name: value[:1] for name, value in whole.items()},
        {name: value[1:] for name, value in whole.items()},
    ]
    parts = [
        {**p, **{k: p[k][:, : int(p["attention_mask"].sum(1).max())] for k in SEQUENCE_FIELDS}} for p in parts
    ]
    job = JobConfig()
    weights = {}
    for name, micro_batches in (("one batch", [whole]), ("micro-batches", parts)):
        torch.manual_seed(1)
        model = BertForPreTraining(config)
        optimizer = build_optimizer(model, job.optim)
        scheduler = build_scheduler(optimizer, job.optim, total_steps=10)
        TrainStep(Trainables(model, optimizer, scheduler), job.optim.max_grad_norm)(micro_batches)
        weights[name] = model.state_dict()
    torch.testing.assert_close(weights["micro-batches"], weights["one batch"], rtol=1e-5, atol=1e-6)


SEQUENCE_FIELDS = ("input_ids", "token_type_ids", "attention_mask", "mlm_labels")
