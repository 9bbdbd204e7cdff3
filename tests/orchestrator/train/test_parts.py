"""The training parts that need no Ray: batch plan, resource check, optimizer and schedule, checkpoints."""

from __future__ import annotations

import math

import pytest
import torch

from common import storage
from common.errors import UserError
from data import BatchSchedule
from model import BertConfig, BertForPreTraining
from orchestrator.config import OptimConfig, ScalingConfig
from orchestrator.run import plan_batches, plan_step_batches
from orchestrator.train.checkpoints import (
    Trainables,
    TrainState,
    export_final,
    init_weights_from,
    load_checkpoint,
    rng_state,
    save_checkpoint,
)
from orchestrator.train.optim import Lamb, build_optimizer, build_scheduler, lr_multiplier, parameter_groups
from orchestrator.train.resources import check_resources, ray_worker_count


def tiny_model(seed: int = 0, vocab_size: int = 99) -> BertForPreTraining:
    torch.manual_seed(seed)
    return BertForPreTraining(BertConfig.from_preset("tiny", vocab_size=vocab_size, num_hidden_layers=1))


def save_untrained_checkpoint(directory, model: BertForPreTraining) -> None:
    """A training checkpoint of `model` at step 0, with a fresh AdamW and schedule."""
    optimizer = build_optimizer(model, OptimConfig())
    scheduler = build_scheduler(optimizer, OptimConfig(), 5)
    save_checkpoint(directory, Trainables(model, optimizer, scheduler), TrainState(), [rng_state()], {})


def random_batch(vocab_size: int = 99, batch: int = 4, seq: int = 12) -> dict[str, torch.Tensor]:
    input_ids = torch.randint(5, vocab_size, (batch, seq))
    labels = torch.full_like(input_ids, -100)
    labels[:, 2:5] = input_ids[:, 2:5]
    return {
        "input_ids": input_ids,
        "token_type_ids": torch.zeros_like(input_ids),
        "attention_mask": torch.ones_like(input_ids),
        "mlm_labels": labels,
        "next_sentence_label": torch.randint(0, 2, (batch,)),
    }


@pytest.mark.parametrize(
    ("global_batch", "micro", "workers", "expected"),
    [(32, 16, 2, (16, 16, 1)), (32, 8, 2, (16, 8, 2)), (32, 16, 1, (32, 16, 2)), (24, 5, 2, (12, 4, 3))],
)
def test_the_global_batch_is_split_over_workers_and_micro_steps(global_batch, micro, workers, expected):
    plan = plan_batches(global_batch, micro, workers)
    assert (plan.per_worker_batch_size, plan.micro_batch_size, plan.accumulation_steps) == expected
    assert plan.micro_batch_size * plan.accumulation_steps * workers == global_batch


@pytest.mark.parametrize(
    ("global_batch", "micro", "workers"), [(16, 8, 3), (256, 32, 5), (10, 2, 4), (7, 7, 7)]
)
def test_an_elastic_worker_count_gives_the_first_ranks_one_example_more(global_batch, micro, workers):
    plan = plan_batches(global_batch, micro, workers, uneven=True)
    shares = [plan.worker_batch_size(rank) for rank in range(workers)]
    assert sum(shares) == global_batch and shares == sorted(shares, reverse=True)
    assert max(shares) - min(shares) <= 1 and max(shares) == plan.per_worker_batch_size
    for rank, share in enumerate(shares):
        sizes = plan.micro_batch_sizes(rank)
        assert len(sizes) == plan.accumulation_steps and sum(sizes) == share
        assert min(sizes) >= 1 and max(sizes) <= plan.micro_batch_size <= micro


def test_an_elastic_cpu_run_leaves_room_for_ray_data():
    def elastic(cpus_per_worker: float, use_gpu: bool = False) -> ScalingConfig:
        return ScalingConfig(3, min_workers=2, cpus_per_worker=cpus_per_worker, data_cpus=1, use_gpu=use_gpu)

    cluster = {"CPU": 2.0}
    assert ray_worker_count(ScalingConfig(num_workers=2), cluster) == 2
    assert ray_worker_count(elastic(0.25), cluster) == (2, 3)
    assert ray_worker_count(elastic(0.5), cluster) == 2  # a third worker would take Ray Data's last CPU
    assert ray_worker_count(elastic(0.5, use_gpu=True), cluster) == (2, 3)  # GPUs bound a GPU run


def test_a_worker_count_that_does_not_divide_the_batch_is_refused_with_the_counts_that_do():
    with pytest.raises(UserError, match="3 workers do not divide train.global_batch_size=32") as error:
        plan_batches(32, 16, 3)
    assert "worker counts that do: 1, 2, 4, 8, 16, 32" in str(error.value)


def test_a_growing_batch_splits_each_base_batch_over_the_workers_at_every_size():
    schedule = BatchSchedule(32, 8, 100)
    plans = plan_step_batches(schedule, 8, 2)
    assert sorted(plans) == [8, 16, 24, 32]
    # Each rank gives half of every base batch; micro-steps grow with the batch, at most 8 examples each.
    assert [(p.per_worker_batch_size, p.accumulation_steps) for p in plans.values()] == [
        (4, 1),
        (8, 1),
        (12, 2),
        (16, 2),
    ]
    for size, plan in plans.items():
        assert sum(sum(plan.micro_batch_sizes(rank)) for rank in range(2)) == size
    # An elastic count: the first rank takes one more of each base batch (3 + 3 + 2 of 8).
    elastic = plan_step_batches(schedule, 8, 3, uneven=True)
    assert [elastic[24].worker_batch_size(rank) for rank in range(3)] == [9, 9, 6]
    # A fixed batch plans as before: one size, the plain split.
    assert plan_step_batches(BatchSchedule(32, 32), 16, 2) == {32: plan_batches(32, 16, 2)}


def test_a_worker_count_that_does_not_divide_the_warmup_start_is_refused_with_the_counts_that_do():
    with pytest.raises(UserError, match="4 workers do not divide train.batch_size_warmup.start=6") as error:
        plan_batches(48, 16, 4, base_batch_size=6)
    assert "worker counts that do: 1, 2, 3, 6" in str(error.value)


def test_resources_that_can_never_be_met_are_named():
    node = {"CPU": 2.0}
    elastic = ScalingConfig(num_workers=8, min_workers=2, cpus_per_worker=0.5, data_cpus=1)
    check_resources(elastic, {"CPU": 2.0}, [node])  # the fewest workers fit; Ray Train adds more as they fit
    check_resources(ScalingConfig(num_workers=2, cpus_per_worker=0.5, data_cpus=1), {"CPU": 2.0}, [node])
    with pytest.raises(UserError, match=r"missing 1 CPU \(it needs 3, the cluster has 2\)"):
        check_resources(ScalingConfig(num_workers=2, cpus_per_worker=1, data_cpus=1), {"CPU": 2.0}, [node])
    with pytest.raises(UserError, match=r"missing 1 GPU \(it needs 1, the cluster has 0\)") as error:
        check_resources(
            ScalingConfig(num_workers=1, use_gpu=True, cpus_per_worker=1, data_cpus=0), {"CPU": 2.0}, [node]
        )
    assert "--cpu" in str(error.value)
    with pytest.raises(UserError, match="a node with"):  # enough in total, but no single node fits a worker
        check_resources(
            ScalingConfig(num_workers=1, cpus_per_worker=3, data_cpus=0),
            {"CPU": 4.0},
            [{"CPU": 2.0}, {"CPU": 2.0}],
        )


def test_schedule_warms_up_linearly_then_decays_to_zero():
    assert [lr_multiplier(s, 4, 8, 12, "linear") for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert lr_multiplier(8, 4, 8, 12, "linear") == pytest.approx(0.5)
    assert lr_multiplier(12, 4, 8, 12, "linear") == 0.0
    assert lr_multiplier(8, 4, 8, 12, "cosine") == pytest.approx(0.5)
    assert lr_multiplier(6, 4, 8, 12, "cosine") == pytest.approx(0.5 * (1 + math.cos(math.pi / 4)))


def test_no_weight_decay_on_biases_and_layernorm():
    model = tiny_model()
    decayed, not_decayed = parameter_groups(model, 0.01)
    names = {id(p): n for n, p in model.named_parameters()}
    assert decayed["weight_decay"] == 0.01 and not_decayed["weight_decay"] == 0.0
    assert all(names[id(p)].endswith(".weight") and p.ndim == 2 for p in decayed["params"])
    assert {names[id(p)] for p in not_decayed["params"]} >= {"bert.embeddings.norm.weight", "mlm_bias"}
    assert len(decayed["params"]) + len(not_decayed["params"]) == len(list(model.parameters()))


def test_lamb_scales_each_update_by_the_trust_ratio():
    weight = torch.nn.Parameter(torch.tensor([3.0, 4.0]))  # norm 5
    optimizer = Lamb([weight], lr=0.1, betas=(0.9, 0.999), eps=0.0)
    weight.grad = torch.tensor([1.0, -1.0])
    optimizer.step()
    # First step: the Adam update is sign(grad) = (1, -1) with norm sqrt(2); trust ratio 5 / sqrt(2).
    expected = torch.tensor([3.0, 4.0]) - 0.1 * (5 / math.sqrt(2)) * torch.tensor([1.0, -1.0])
    torch.testing.assert_close(weight.detach(), expected)


@pytest.mark.parametrize("name", ["adamw", "lamb", "stableadamw"])
def test_a_checkpoint_restores_training_exactly(tmp_path, name):
    config = OptimConfig(name=name, lr=1e-3, warmup_steps=2)

    def make():
        model = tiny_model()
        optimizer = build_optimizer(model, config)
        return model, optimizer, build_scheduler(optimizer, config, total_steps=10)

    def step(model, optimizer, scheduler, batch):
        model(**batch).loss.backward()
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad()

    batches = [random_batch() for _ in range(4)]
    model, optimizer, scheduler = make()
    for batch in batches[:2]:
        step(model, optimizer, scheduler, batch)
    state = TrainState(step=2, consumed_samples=8, data_epoch=1, data_step_in_epoch=0, world_size=1)
    save_checkpoint(
        tmp_path, Trainables(model, optimizer, scheduler), state, [rng_state()], {"train": {"max_steps": 10}}
    )
    for batch in batches[2:]:  # dropout is on: the RNG matters too
        step(model, optimizer, scheduler, batch)

    resumed_model, resumed_optimizer, resumed_scheduler = make()
    restored = load_checkpoint(
        tmp_path, Trainables(resumed_model, resumed_optimizer, resumed_scheduler), rank=0
    )
    assert (restored.step, restored.consumed_samples, restored.data_epoch) == (2, 8, 1)
    for batch in batches[2:]:
        step(resumed_model, resumed_optimizer, resumed_scheduler, batch)
    assert resumed_scheduler.get_last_lr() == scheduler.get_last_lr()
    for (name_a, a), (_, b) in zip(
        model.state_dict().items(), resumed_model.state_dict().items(), strict=True
    ):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name_a)


def test_init_from_copies_weights_of_a_checkpoint_or_hf_folder_and_refuses_other_sizes(tmp_path, bucket):
    donor = tiny_model(seed=1)
    donor.save_hf(tmp_path / "hf")
    model = tiny_model(seed=2)
    init_weights_from(model, tmp_path / "hf")
    torch.testing.assert_close(model.state_dict(), donor.state_dict())

    save_untrained_checkpoint(tmp_path / "ckpt", donor)
    model = tiny_model(seed=3)
    init_weights_from(model, tmp_path / "ckpt")
    torch.testing.assert_close(model.state_dict(), donor.state_dict())

    storage.copy_dir(tmp_path / "ckpt", f"{bucket}/ckpt")  # phase 2 on a cluster starts from a bucket
    model = tiny_model(seed=4)
    init_weights_from(model, f"{bucket}/ckpt")
    torch.testing.assert_close(model.state_dict(), donor.state_dict())

    with pytest.raises(UserError, match="vocab_size 99 there vs 120 here"):
        init_weights_from(tiny_model(vocab_size=120), tmp_path / "ckpt")
    with pytest.raises(UserError, match="not a training checkpoint"):
        init_weights_from(model, tmp_path)


def test_the_final_export_loads_in_transformers_with_the_tokenizer(tmp_path):
    import transformers

    model = tiny_model().eval()
    save_untrained_checkpoint(tmp_path / "ckpt", model)
    tokenizer_dir = tmp_path / "tok"
    tokenizer_dir.mkdir()
    (tokenizer_dir / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a"]))
    final = export_final(tmp_path / "ckpt", tokenizer_dir, tmp_path / "final")
    assert (final / "vocab.txt").is_file() and (final / "config.json").is_file()
    hf = transformers.BertForPreTraining.from_pretrained(final).eval()
    assert transformers.AutoTokenizer.from_pretrained(final)("a")["input_ids"] == [2, 5, 3]  # [CLS] a [SEP]
    batch = random_batch()
    with torch.no_grad():
        ours = model.bert(batch["input_ids"], batch["token_type_ids"], batch["attention_mask"])[0]
        theirs = hf.bert(
            input_ids=batch["input_ids"],
            token_type_ids=batch["token_type_ids"],
            attention_mask=batch["attention_mask"],
        ).last_hidden_state
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)
