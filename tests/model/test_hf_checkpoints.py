"""HF checkpoint import/export: save_hf -> transformers, transformers' checkpoints -> from_hf, bad input."""

import json

import pytest
import torch
import transformers
from safetensors.torch import load_file, save_file
from torch.testing import assert_close

from model import IGNORE_INDEX, BertConfig, BertForPreTraining, CheckpointError
from tests.model.helpers import hf_reference, random_batch, tiny_config


def _perturbed(model: BertForPreTraining, seed: int = 0) -> BertForPreTraining:
    torch.manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.1)
        # Training never moves the vocabulary padding rows away from zero (no lookups, no logits there).
        model.bert.embeddings.word.weight[model.config.vocab_size :].zero_()
        model.mlm_bias[model.config.vocab_size :].zero_()
    return model.eval()


def test_save_hf_loads_in_transformers_with_same_outputs(tmp_path):
    config = tiny_config()  # vocab 99, padded to 128 inside
    ours = _perturbed(BertForPreTraining(config))
    assert ours.bert.embeddings.word.weight.shape[0] == 128
    ours.save_hf(tmp_path)

    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["model_type"] == "bert" and saved["architectures"] == ["BertForPreTraining"]
    assert saved["vocab_size"] == 99
    tensors = load_file(tmp_path / "model.safetensors")
    assert tensors["bert.embeddings.word_embeddings.weight"].shape == (99, 32)
    assert tensors["cls.predictions.bias"].shape == (99,)

    reference, info = transformers.BertForPreTraining.from_pretrained(tmp_path, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    reference.eval()
    batch = random_batch(config)
    inputs = {k: batch[k] for k in ("input_ids", "token_type_ids", "attention_mask")}
    with torch.no_grad():
        out = ours(**batch)
        expected = reference(**inputs)
    assert_close(out.mlm_logits, expected.prediction_logits[batch["mlm_labels"] != IGNORE_INDEX])
    assert_close(out.nsp_logits, expected.seq_relationship_logits)


def test_round_trip_keeps_every_weight(tmp_path):
    ours = _perturbed(BertForPreTraining(tiny_config()))
    ours.save_hf(tmp_path)
    loaded = BertForPreTraining.from_hf(tmp_path)
    for (name, a), (_, b) in zip(ours.state_dict().items(), loaded.state_dict().items(), strict=True):
        assert_close(a, b, msg=name)


def _encoder_output(model, batch):
    inputs = {k: batch[k] for k in ("input_ids", "token_type_ids", "attention_mask")}
    with torch.no_grad():
        return model.bert(**inputs)


def test_from_hf_bert_model_checkpoint_initialises_heads_with_a_warning(tmp_path):
    config = tiny_config()
    reference = hf_reference(config, cls=transformers.BertModel)
    reference.save_pretrained(tmp_path)
    missing_heads = r"no weights for cls\.predictions\.transform\.dense\.weight.*cls\.seq_relationship\.bias"
    with pytest.warns(UserWarning, match=missing_heads):
        ours = BertForPreTraining.from_hf(tmp_path).eval()
    batch = random_batch(config)
    sequence_output, pooled_output = _encoder_output(ours, batch)
    with torch.no_grad():
        expected = reference(**{k: batch[k] for k in ("input_ids", "token_type_ids", "attention_mask")})
    real = batch["attention_mask"].bool()
    assert_close(sequence_output[real], expected.last_hidden_state[real])
    assert_close(pooled_output, expected.pooler_output)
    assert_close(ours.mlm_bias, torch.zeros_like(ours.mlm_bias))  # fresh BERT initialisation


@pytest.mark.parametrize("strip_prefix", [False, True], ids=["bert. prefix", "no prefix"])
def test_from_hf_reads_pytorch_model_bin(tmp_path, strip_prefix):
    config = tiny_config()
    reference = hf_reference(config)
    state_dict = reference.state_dict()
    if strip_prefix:
        state_dict = {k.removeprefix("bert."): v for k, v in state_dict.items()}
    (tmp_path / "config.json").write_text(json.dumps(config.to_hf_dict()))
    torch.save(state_dict, tmp_path / "pytorch_model.bin")
    ours = BertForPreTraining.from_hf(tmp_path).eval()
    batch = random_batch(config)
    with torch.no_grad():
        expected = reference(**{k: batch[k] for k in ("input_ids", "token_type_ids", "attention_mask")})
        out = ours(**batch)
    assert_close(out.mlm_logits, expected.prediction_logits[batch["mlm_labels"] != IGNORE_INDEX])
    assert_close(out.nsp_logits, expected.seq_relationship_logits)


def test_pytorch_model_bin_is_read_with_weights_only(tmp_path):
    config = tiny_config()
    (tmp_path / "config.json").write_text(json.dumps(config.to_hf_dict()))
    torch.save({"weights": torch.zeros(1), "code": print}, tmp_path / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match=r"pytorch_model\.bin: cannot read the weights"):
        BertForPreTraining.from_hf(tmp_path)


def test_directory_without_config_is_not_a_checkpoint(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(CheckpointError, match=r"is not a BERT checkpoint: config\.json not found"):
        BertForPreTraining.from_hf(tmp_path)


def test_missing_directory(tmp_path):
    with pytest.raises(CheckpointError, match="is not a directory"):
        BertForPreTraining.from_hf(tmp_path / "nowhere")


def test_config_of_another_model_type(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2", "n_embd": 32}))
    with pytest.raises(CheckpointError, match=r"config\.json.*model_type is 'gpt2', expected 'bert'"):
        BertForPreTraining.from_hf(tmp_path)


def test_missing_weights_file(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(tiny_config().to_hf_dict()))
    expected = r"has no weights: expected model\.safetensors or pytorch_model\.bin"
    with pytest.raises(CheckpointError, match=expected):
        BertForPreTraining.from_hf(tmp_path)


def test_missing_encoder_tensor(tmp_path):
    config = tiny_config()
    BertForPreTraining(config).save_hf(tmp_path)
    tensors = load_file(tmp_path / "model.safetensors")
    del tensors["bert.encoder.layer.1.attention.self.key.weight"]
    save_file(tensors, tmp_path / "model.safetensors")
    expected = r"model\.safetensors: missing tensor 'bert\.encoder\.layer\.1\.attention\.self\.key\.weight'"
    with pytest.raises(CheckpointError, match=expected):
        BertForPreTraining.from_hf(tmp_path)


def test_tensor_of_the_wrong_shape(tmp_path):
    config = tiny_config()
    BertForPreTraining(config).save_hf(tmp_path)
    tensors = load_file(tmp_path / "model.safetensors")
    tensors["bert.encoder.layer.0.intermediate.dense.weight"] = torch.zeros(50, 32)
    save_file(tensors, tmp_path / "model.safetensors")
    with pytest.raises(
        CheckpointError,
        match=r"model\.safetensors: tensor 'bert\.encoder\.layer\.0\.intermediate\.dense\.weight' "
        r"has shape \(50, 32\), expected \(48, 32\)",
    ):
        BertForPreTraining.from_hf(tmp_path)


def test_hidden_size_not_divisible_by_heads(tmp_path):
    with pytest.raises(ValueError, match="hidden_size 30 is not divisible by num_attention_heads 4"):
        BertConfig(hidden_size=30, num_attention_heads=4)
    (tmp_path / "config.json").write_text(json.dumps({**tiny_config().to_hf_dict(), "hidden_size": 30}))
    with pytest.raises(CheckpointError, match=r"config\.json.*hidden_size 30 is not divisible"):
        BertForPreTraining.from_hf(tmp_path)


def test_unsupported_activation_is_refused(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({**tiny_config().to_hf_dict(), "hidden_act": "relu"}))
    with pytest.raises(CheckpointError, match="hidden_act is 'relu'; only 'gelu' is supported"):
        BertForPreTraining.from_hf(tmp_path)
