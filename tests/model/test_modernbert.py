"""ModernBERT: the same outputs as `transformers.ModernBertForMaskedLM` given the same weights (fp32, eval),
HF import/export, the unpadded encoder with its sliding windows, BERT's batch and output contract."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
import transformers
from safetensors.torch import load_file, save_file
from torch.testing import assert_close
from torch.utils.flop_counter import FlopCounterMode

from model import (
    IGNORE_INDEX,
    MODERNBERT_PRESETS,
    CheckpointError,
    ModernBertConfig,
    ModernBertForPreTraining,
    compile_model,
)
from model.modernbert import attention_path, band_mask
from model.modernbert_hf import config_from_hf, config_to_hf, to_hf_state_dict
from tests.model.helpers import random_batch

SEQ = 40
ENCODER_INPUTS = ("input_ids", "token_type_ids", "attention_mask")


def tiny_config(**overrides) -> ModernBertConfig:
    """Five layers: global at 0 and 3, sliding windows of 8 tokens either side in 1, 2 and 4."""
    sizes = dict(
        vocab_size=99,
        hidden_size=32,
        num_hidden_layers=5,
        num_attention_heads=4,
        intermediate_size=48,
        local_attention=16,
        max_position_embeddings=64,
        pad_token_id=0,
    )
    return ModernBertConfig(**{**sizes, **overrides})


def hf_reference(config: ModernBertConfig, cls=transformers.ModernBertForMaskedLM, seed: int = 0):
    """An HF model of this config whose every weight (LayerNorms and biases too) is random, in eval mode."""
    torch.manual_seed(seed)
    model = cls(transformers.ModernBertConfig(**config_to_hf(config), attn_implementation="sdpa"))
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.1)
    return model.eval()


def _perturbed(model: ModernBertForPreTraining, seed: int = 0) -> ModernBertForPreTraining:
    torch.manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.1)
        # Training never moves the vocabulary padding rows away from zero (no lookups, no logits there).
        model.bert.embeddings.word.weight[model.config.vocab_size :].zero_()
        if model.mlm_bias is not None:
            model.mlm_bias[model.config.vocab_size :].zero_()
    return model.eval()


def _masked_mean(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    weights = attention_mask[..., None].float()
    return (hidden * weights).sum(dim=1) / weights.sum(dim=1)


CASES = {
    "defaults, window 16, padded": dict(config={}, lengths=[40, 27, 9, 33]),
    "every bias, odd window, global every 2nd, mean pooling, other activations": dict(
        config=dict(
            num_hidden_layers=4,
            global_attn_every_n_layers=2,
            local_attention=11,
            attention_bias=True,
            mlp_bias=True,
            norm_bias=True,
            classifier_bias=True,
            hidden_activation="gelu_pytorch_tanh",
            classifier_activation="silu",
            classifier_pooling="mean",
            global_rope_theta=5000.0,
            local_rope_theta=300.0,
        ),
        lengths=[33, 40, 6, 21, 12],
    ),
    "no decoder bias, one head, no vocab padding, no padding": dict(
        config=dict(decoder_bias=False, num_attention_heads=1, pad_vocab_multiple=1, vocab_size=128),
        lengths=[40, 40, 40],
    ),
}


@pytest.fixture(params=list(CASES), ids=list(CASES))
def case(request, tmp_path):
    spec = CASES[request.param]
    config = tiny_config(**spec["config"])
    assert max(spec["lengths"]) > config.local_attention // 2 + 1  # the windows cut something off
    reference = hf_reference(config, seed=len(request.param))
    reference.save_pretrained(tmp_path)
    ours = ModernBertForPreTraining.from_hf(tmp_path).eval()
    batch = random_batch(config, seq_len=SEQ, lengths=spec["lengths"], seed=len(request.param))
    return config, ours, reference, batch


def test_encoder_outputs_match_transformers(case):
    config, ours, reference, batch = case
    with torch.no_grad():
        sequence_output, pooled_output = ours.bert(**{k: batch[k] for k in ENCODER_INPUTS})
        expected = reference.model(batch["input_ids"], batch["attention_mask"]).last_hidden_state
    real = batch["attention_mask"].bool()  # padding positions hold zeros in ours, anything in HF's
    assert_close(sequence_output[real], expected[real])
    assert not sequence_output[~real].any()
    if config.classifier_pooling == "cls":
        assert_close(pooled_output, expected[:, 0])
    else:
        assert_close(pooled_output, _masked_mean(expected, batch["attention_mask"]))


def test_mlm_logits_and_loss_match_transformers(case):
    config, ours, reference, batch = case
    with torch.no_grad():
        out = ours(**batch)  # token_type_ids and next_sentence_label are in the batch and ignored
        expected = reference(batch["input_ids"], batch["attention_mask"], labels=batch["mlm_labels"])
    labelled = batch["mlm_labels"] != IGNORE_INDEX
    assert out.mlm_logits.shape == (int(labelled.sum()), config.vocab_size)
    assert_close(out.mlm_logits, expected.logits[labelled])
    assert_close(out.mlm_loss, expected.loss)
    assert_close(out.loss, expected.loss)
    assert out.mlm_count == labelled.sum()
    labels = batch["mlm_labels"][labelled]
    assert out.mlm_correct == (expected.logits[labelled].argmax(-1) == labels).sum()
    # BERT's output fields, the NSP ones empty: the trainer reads them the same way.
    assert out.nsp_logits is None
    assert out.nsp_loss == 0 and out.nsp_count == 0 and out.nsp_correct == 0


def test_the_sliding_windows_change_the_outputs(tmp_path):
    """The cases above would not notice a missing window if the windows did not matter: they do."""
    config = tiny_config()
    reference = hf_reference(config)
    reference.save_pretrained(tmp_path)
    all_global = ModernBertForPreTraining.from_hf(tmp_path, local_attention=1000).eval()
    batch = random_batch(config, seq_len=SEQ, lengths=[40, 27, 9, 33])
    with torch.no_grad():
        hidden, _ = all_global.bert(batch["input_ids"], attention_mask=batch["attention_mask"])
        expected = reference.model(batch["input_ids"], batch["attention_mask"]).last_hidden_state
    long_rows = torch.tensor([True, True, False, True])
    assert (hidden[long_rows] - expected[long_rows]).abs().max() > 1e-2
    assert_close(hidden[2, :9], expected[2, :9])  # 9 tokens fit in any window: same as HF


def test_band_mask():
    assert band_mask(5, None, torch.device("cpu")) is None
    assert band_mask(5, 4, torch.device("cpu")) is None  # every key within reach
    mask = band_mask(5, 1, torch.device("cpu"))
    assert mask.int().tolist() == [
        [1, 1, 0, 0, 0],
        [1, 1, 1, 0, 0],
        [0, 1, 1, 1, 0],
        [0, 0, 1, 1, 1],
        [0, 0, 0, 1, 1],
    ]


SAVE_CONFIGS = {
    "defaults": {},
    "biases, no decoder bias": dict(
        attention_bias=True, mlp_bias=True, norm_bias=True, classifier_bias=True, decoder_bias=False
    ),
}


@pytest.mark.parametrize("overrides", list(SAVE_CONFIGS.values()), ids=list(SAVE_CONFIGS))
def test_save_hf_loads_in_transformers_with_same_outputs(tmp_path, overrides):
    config = tiny_config(**overrides)  # vocab 99, padded to 128 inside
    ours = _perturbed(ModernBertForPreTraining(config))
    assert ours.bert.embeddings.word.weight.shape[0] == 128
    ours.save_hf(tmp_path)

    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["model_type"] == "modernbert" and saved["architectures"] == ["ModernBertForMaskedLM"]
    assert saved["vocab_size"] == 99
    tensors = load_file(tmp_path / "model.safetensors")
    assert tensors["model.embeddings.tok_embeddings.weight"].shape == (99, 32)
    assert ("decoder.bias" in tensors) == config.decoder_bias

    reference, info = transformers.ModernBertForMaskedLM.from_pretrained(tmp_path, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    assert reference.config.layer_types == [
        "full_attention",
        "sliding_attention",
        "sliding_attention",
        "full_attention",
        "sliding_attention",
    ]
    assert reference.config.sliding_window == 8
    reference.eval()
    batch = random_batch(config, seq_len=SEQ, lengths=[40, 31, 12, 25])
    with torch.no_grad():
        out = ours(**batch)
        expected = reference(batch["input_ids"], batch["attention_mask"])
    assert_close(out.mlm_logits, expected.logits[batch["mlm_labels"] != IGNORE_INDEX])


def test_round_trip_is_identical(tmp_path):
    config = tiny_config(norm_bias=True, attention_bias=True)
    hf_reference(config, seed=7).save_pretrained(tmp_path / "hf")
    first = ModernBertForPreTraining.from_hf(tmp_path / "hf")
    first.save_hf(tmp_path / "ours")
    second = ModernBertForPreTraining.from_hf(tmp_path / "ours")
    assert second.config == first.config
    assert first.state_dict().keys() == second.state_dict().keys()
    for name, tensor in first.state_dict().items():
        assert torch.equal(tensor, second.state_dict()[name]), name
    # Our export holds transformers' own tensors, bit for bit (transformers drops the tied decoder weight).
    theirs, exported = (
        load_file(tmp_path / "hf" / "model.safetensors"),
        load_file(tmp_path / "ours" / "model.safetensors"),
    )
    assert theirs.keys() == exported.keys()
    for key, tensor in theirs.items():
        assert torch.equal(tensor, exported[key]), key


def test_modernbert_model_checkpoint_loads_the_encoder_and_warns_about_the_head(tmp_path):
    config = tiny_config()
    reference = hf_reference(config, cls=transformers.ModernBertModel)
    reference.save_pretrained(tmp_path)  # keys without the `model.` prefix
    with pytest.warns(
        UserWarning, match=r"no weights for head\.dense\.weight, head\.norm\.weight, decoder\.bias"
    ):
        ours = ModernBertForPreTraining.from_hf(tmp_path).eval()
    batch = random_batch(config, seq_len=SEQ, lengths=[40, 20, 30])
    with torch.no_grad():
        sequence_output, _ = ours.bert(batch["input_ids"], attention_mask=batch["attention_mask"])
        expected = reference(batch["input_ids"], batch["attention_mask"]).last_hidden_state
    real = batch["attention_mask"].bool()
    assert_close(sequence_output[real], expected[real])
    assert_close(ours.mlm_bias, torch.zeros_like(ours.mlm_bias))  # fresh initialisation


def test_transformers_4_config_is_read():
    """config.json of transformers 4.x: the layer pattern and the thetas as plain fields."""
    hf = {
        "model_type": "modernbert",
        "num_hidden_layers": 7,
        "global_attn_every_n_layers": 2,
        "global_rope_theta": 1234.0,
        "local_rope_theta": 55.0,
        "local_attention": 64,
        "bos_token_id": 50281,
        "cls_token_id": 50281,
        "sep_token_id": 50282,
        "reference_compile": True,
    }
    config = config_from_hf(hf)
    assert config.attention_windows == (None, 32, None, 32, None, 32, None)
    assert (config.global_rope_theta, config.local_rope_theta) == (1234.0, 55.0)
    assert (config.cls_token_id, config.sep_token_id) == (50281, 50282)
    assert config_from_hf(config_to_hf(config)) == config


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (dict(model_type="bert"), "model_type is 'bert', expected 'modernbert'"),
        (
            dict(rope_parameters={"full_attention": {"rope_type": "yarn", "rope_theta": 1.0}}),
            "rope_parameters.full_attention.rope_type is 'yarn'",
        ),
        (
            dict(
                layer_types=[
                    "full_attention",
                    "sliding_attention",
                    "full_attention",
                    "full_attention",
                    "sliding_attention",
                ]
            ),
            "is not a global layer every n layers",
        ),
        (dict(hidden_activation="gelu_new"), "hidden_activation 'gelu_new' is unknown"),
        (dict(tie_word_embeddings=False), "tie_word_embeddings is false"),
    ],
    ids=["model type", "rope type", "layer pattern", "activation", "untied decoder"],
)
def test_unsupported_configs_are_refused(tmp_path, change, message):
    (tmp_path / "config.json").write_text(json.dumps({**config_to_hf(tiny_config()), **change}))
    with pytest.raises(CheckpointError, match=r"config\.json: not a usable ModernBERT config: .*" + message):
        ModernBertForPreTraining.from_hf(tmp_path)


def test_missing_encoder_tensor(tmp_path):
    ModernBertForPreTraining(tiny_config()).save_hf(tmp_path)
    tensors = load_file(tmp_path / "model.safetensors")
    del tensors["model.layers.4.attn.Wqkv.weight"]
    save_file(tensors, tmp_path / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"missing tensor 'model\.layers\.4\.attn\.Wqkv\.weight'"):
        ModernBertForPreTraining.from_hf(tmp_path)


def test_tensor_of_the_wrong_shape(tmp_path):
    ModernBertForPreTraining(tiny_config()).save_hf(tmp_path)
    tensors = load_file(tmp_path / "model.safetensors")
    tensors["model.layers.0.mlp.Wi.weight"] = torch.zeros(48, 32)  # GeGLU's input is 2 x 48 rows
    save_file(tensors, tmp_path / "model.safetensors")
    with pytest.raises(
        CheckpointError,
        match=r"'model\.layers\.0\.mlp\.Wi\.weight' has shape \(48, 32\), "
        r"expected \(96, 32\)",
    ):
        ModernBertForPreTraining.from_hf(tmp_path)


PADDINGS = {
    "one token": [40, 39, 40],
    "much of the sequence": [40, 3, 1, 18],
    "mixed": [17, 40, 26, 5, 33],
}


@pytest.fixture(params=list(PADDINGS), ids=list(PADDINGS))
def lengths(request) -> list[int]:
    return PADDINGS[request.param]


def test_a_padded_batch_gives_what_each_sequence_gives_alone(lengths):
    config = tiny_config(classifier_pooling="mean")
    model = _perturbed(ModernBertForPreTraining(config))
    batch = random_batch(config, seq_len=SEQ, lengths=lengths, seed=len(lengths))
    with torch.no_grad():
        sequence_output, pooled_output = model.bert(
            batch["input_ids"], attention_mask=batch["attention_mask"]
        )
        logits = model(**batch).mlm_logits
        start = 0
        for row, length in enumerate(lengths):
            alone = {k: batch[k][row : row + 1, :length] for k in ("input_ids", "mlm_labels")}
            alone_sequence, alone_pooled = model.bert(alone["input_ids"])  # no mask: the dense path
            assert_close(sequence_output[row, :length], alone_sequence[0])
            assert_close(pooled_output[row], alone_pooled[0])
            alone_logits = model(**alone).mlm_logits
            assert_close(logits[start : start + len(alone_logits)], alone_logits)
            start += len(alone_logits)
        assert start == len(logits)


def _gradients(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


def test_unpadded_and_padded_paths_give_the_same_losses_and_gradients(lengths):
    config = tiny_config()
    unpadded = _perturbed(ModernBertForPreTraining(config)).train()
    padded = ModernBertForPreTraining(dataclasses.replace(config, unpad=False)).train()
    padded.load_state_dict(unpadded.state_dict())
    batch = random_batch(config, seq_len=SEQ, lengths=lengths, seed=len(lengths))
    outputs = []
    for model in (unpadded, padded):
        out = model(**batch)
        out.loss.backward()
        outputs.append(out)
    ours, theirs = outputs
    assert_close(ours.mlm_logits, theirs.mlm_logits)
    assert_close(ours.loss, theirs.loss)
    assert (ours.mlm_count, ours.mlm_correct) == (theirs.mlm_count, theirs.mlm_correct)
    padded_gradients = _gradients(padded)
    assert _gradients(unpadded).keys() == padded_gradients.keys()
    for name, gradient in _gradients(unpadded).items():
        assert_close(gradient, padded_gradients[name], msg=name)


def test_unpadded_training_step_matches_transformers_loss_and_gradients(tmp_path):
    config = tiny_config(norm_bias=True, mlp_bias=True)
    reference = hf_reference(config, seed=3).train()  # dropouts 0, ModernBERT's defaults
    reference.save_pretrained(tmp_path)
    ours = ModernBertForPreTraining.from_hf(tmp_path).train()
    batch = random_batch(config, seq_len=SEQ, lengths=[40, 27, 9, 33], seed=3)
    out = ours(**batch)
    expected = reference(batch["input_ids"], batch["attention_mask"], labels=batch["mlm_labels"])
    assert_close(out.loss, expected.loss)
    out.loss.backward()
    expected.loss.backward()
    holder = ModernBertForPreTraining(config)  # our gradients under transformers' names, vocabulary cut
    holder.load_state_dict({name: p.grad for name, p in ours.named_parameters()})
    ours_gradients = to_hf_state_dict(holder)
    for name, parameter in reference.named_parameters():
        assert_close(ours_gradients[name], parameter.grad, msg=name)


def test_every_layer_works_on_the_real_tokens_only():
    config = tiny_config()
    model = ModernBertForPreTraining(config).train()
    seen: dict[str, tuple[int, ...]] = {}

    def record(name: str):
        def hook(module, args, output) -> None:
            seen[name] = tuple(args[0].shape)

        return hook

    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear | torch.nn.LayerNorm | torch.nn.Embedding):
            module.register_forward_hook(record(name))
    lengths = [40, 5, 19, 2]
    batch = random_batch(config, seq_len=SEQ, lengths=lengths)
    tokens, labelled = sum(lengths), int((batch["mlm_labels"] != IGNORE_INDEX).sum())
    model(**batch)
    hidden, inter = config.hidden_size, config.intermediate_size
    for name, shape in seen.items():
        if name == "bert.embeddings.word":
            assert shape == (tokens,), name
        elif name.startswith("bert."):
            assert shape == (tokens, inter if name.endswith("mlp_out") else hidden), name
        else:
            assert shape == (labelled, hidden), name  # the MLM head
    # word, norm; 6 per layer, the first without an attention norm; final norm; MLM transform and norm
    assert len(seen) == 2 + 6 * config.num_hidden_layers - 1 + 1 + 2


def test_split_batch_with_global_normaliser_gives_the_full_batch_loss_and_gradients():
    config = tiny_config()
    model = _perturbed(ModernBertForPreTraining(config)).train()
    batch = random_batch(config, seq_len=SEQ, lengths=[40, 12, 33, 27, 8, 20], seed=5)

    full = model(**batch)
    full.loss.backward()
    full_gradients = _gradients(model)
    model.zero_grad()

    mlm_total = (batch["mlm_labels"] != IGNORE_INDEX).sum()
    halves = [{k: v[:2] for k, v in batch.items()}, {k: v[2:] for k, v in batch.items()}]  # uneven on purpose
    outputs = [model(**half, mlm_normalizer=mlm_total, nsp_normalizer=6) for half in halves]
    for out in outputs:
        out.loss.backward()  # accumulates, as micro-steps do

    assert_close(sum(out.loss for out in outputs), full.loss)
    assert_close(sum(out.mlm_loss for out in outputs), full.mlm_loss)
    assert sum(out.mlm_count for out in outputs) == full.mlm_count
    assert sum(out.mlm_correct for out in outputs) == full.mlm_correct
    split_gradients = _gradients(model)
    for name, gradient in full_gradients.items():
        assert_close(split_gradients[name], gradient, msg=name)


def test_activation_checkpointing_gives_the_same_loss_and_gradients():
    config = tiny_config(num_hidden_layers=3)
    model = _perturbed(ModernBertForPreTraining(config)).train()
    recomputing = ModernBertForPreTraining(dataclasses.replace(config, activation_checkpointing=True)).train()
    recomputing.load_state_dict(model.state_dict())
    batch = random_batch(config, seq_len=SEQ, lengths=[40, 21, 9])
    losses = []
    for m in (model, recomputing):
        out = m(**batch)
        out.loss.backward()
        losses.append(out.loss)
    assert_close(losses[0], losses[1])
    recomputed = _gradients(recomputing)
    for name, gradient in _gradients(model).items():
        assert_close(recomputed[name], gradient, msg=name)


def test_training_flops_count_the_matmuls_of_an_unpadded_step():
    """With every sequence inside the window, the formula equals torch's own count of the step's matmuls
    (attention dropout on: SDPA's math kernel is made of counted matmuls)."""
    lengths = [16, 5, 9, 2]
    config = tiny_config(pad_vocab_multiple=1, local_attention=32, attention_dropout=0.1)
    batch = random_batch(config, seq_len=16, lengths=lengths)
    real = torch.tensor(lengths, dtype=torch.float64)
    labelled = float((batch["mlm_labels"] != IGNORE_INDEX).sum())
    expected = config.training_flops(float(real.sum()), float(real.square().sum()), labelled, len(lengths))
    model = ModernBertForPreTraining(config).train()
    with FlopCounterMode(display=False) as counter:
        model(**batch).loss.backward()
    assert counter.get_total_flops() == expected
    # Longer sequences: local layers count the window, not the whole sequence.
    narrow = tiny_config(local_attention=4)
    assert narrow.training_flops(100.0, 10000.0, 0.0, 1) < config.training_flops(100.0, 10000.0, 0.0, 1)


def test_compiled_layers_match_eager():
    torch._dynamo.reset()
    config = tiny_config(num_hidden_layers=2)
    model = _perturbed(ModernBertForPreTraining(config)).train()
    eager = ModernBertForPreTraining(config).train()
    eager.load_state_dict(model.state_dict())
    compile_model(model, backend="aot_eager")
    for seed, lengths in enumerate([[40, 12, 30], [40, 40, 40], [7, 33, 21, 40]]):
        batch = random_batch(config, seq_len=SEQ, lengths=lengths, seed=seed)
        assert_close(model(**batch).loss, eager(**batch).loss)


def test_presets_are_the_published_sizes():
    base, large = ModernBertConfig.from_preset("base"), ModernBertConfig.from_preset("large")
    assert (base.num_hidden_layers, base.hidden_size, base.intermediate_size, base.num_attention_heads) == (
        22,
        768,
        1152,
        12,
    )
    assert (
        large.num_hidden_layers,
        large.hidden_size,
        large.intermediate_size,
        large.num_attention_heads,
    ) == (
        28,
        1024,
        2624,
        16,
    )
    for config in (base, large):
        assert (config.vocab_size, config.max_position_embeddings, config.local_attention) == (
            50368,
            8192,
            128,
        )
        assert (config.global_rope_theta, config.local_rope_theta) == (160_000.0, 10_000.0)
    assert base.attention_windows[:4] == (None, 64, 64, None) and base.attention_windows[21] is None
    assert sum(window is None for window in large.attention_windows) == 10  # layers 0, 3, ..., 27
    assert set(MODERNBERT_PRESETS) == {"tiny", "mini", "base", "large"}
    tiny = ModernBertConfig.from_preset("tiny")
    assert None in tiny.attention_windows and 64 in tiny.attention_windows  # both kinds in the test sizes
    with pytest.raises(
        ValueError, match="unknown ModernBERT preset 'huge'; choose one of tiny, mini, base, large"
    ):
        ModernBertConfig.from_preset("huge")


def test_initialisation_is_modernberts():
    config = tiny_config(num_hidden_layers=2, hidden_size=64, intermediate_size=96, attention_bias=True)
    model = ModernBertForPreTraining(config)
    std_out = 0.02 / (2.0 * 2) ** 0.5
    layer = model.bert.layers[1]
    assert layer.qkv.weight.abs().max() <= 2 * 0.02 and layer.qkv.weight.std() > 0.01
    assert layer.mlp_out.weight.abs().max() <= 2 * std_out
    assert not layer.qkv.bias.any() and bool((layer.mlp_norm.weight == 1).all())
    assert layer.mlp_norm.bias is None  # norm_bias off
    assert not model.bert.embeddings.word.weight[config.pad_token_id].any()
    assert not model.bert.embeddings.word.weight[config.vocab_size :].any()


def test_the_run_says_which_attention_padded_batches_get():
    cuda, cpu = torch.device("cuda"), torch.device("cpu")  # only named: nothing runs on them here
    config = tiny_config()
    assert "one SDPA call per sequence (local layers with a band mask)" in attention_path(config, cpu)
    assert "varlen_attn (flash, local layers windowed)" in attention_path(config, cuda)
    sdpa = dataclasses.replace(config, unpadded_attention="sdpa")
    assert "nested tensors through SDPA for global layers" in attention_path(sdpa, cuda)
    assert "run padded" in attention_path(dataclasses.replace(config, unpad=False), cuda)
    with pytest.raises(ValueError, match="unpadded_attention 'flash' is unknown; choose one of varlen, sdpa"):
        tiny_config(unpadded_attention="flash")
