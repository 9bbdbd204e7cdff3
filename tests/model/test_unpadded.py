"""The unpadded encoder: a batch with padding runs on its real tokens only, with the numbers of the padded
path and of transformers; a batch without padding keeps the dense path; compiled, it does not recompile."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch._dynamo.testing import CompileCounterWithBackend
from torch.testing import assert_close
from torch.utils.flop_counter import FlopCounterMode

from model import IGNORE_INDEX, BertForPreTraining, TokenLayout, attention_path, compile_model
from model.bert import nested_attention
from model.hf import to_hf_state_dict
from tests.model.helpers import hf_reference, random_batch, tiny_config

SEQ = 16
# Real lengths per row, for a sequence of 16: padding of every shape.
PADDINGS = {
    "none": [16, 16, 16, 16],
    "one token": [16, 15, 16, 16],
    "most of the sequence": [16, 2, 1, 3],
    "mixed": [7, 16, 12, 4, 9],
}
NO_DROPOUT = dict(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)


def _gradients(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.grad for name, p in model.named_parameters() if p.grad is not None}


def _hf_named_gradients(model: BertForPreTraining) -> dict[str, torch.Tensor]:
    """Our gradients under transformers' parameter names (QKV split, vocabulary padding cut off)."""
    holder = BertForPreTraining(model.config)
    holder.load_state_dict({name: p.grad for name, p in model.named_parameters()})
    return to_hf_state_dict(holder)


@pytest.fixture(params=list(PADDINGS), ids=list(PADDINGS))
def lengths(request) -> list[int]:
    return PADDINGS[request.param]


def test_unpadded_and_padded_paths_give_the_same_outputs_losses_and_gradients(lengths):
    config = tiny_config(**NO_DROPOUT)
    unpadded = BertForPreTraining(config)
    padded = BertForPreTraining(dataclasses.replace(config, unpad=False))
    padded.load_state_dict(unpadded.state_dict())
    batch = random_batch(config, seq_len=SEQ, lengths=lengths, seed=len(lengths))
    real = batch["attention_mask"].bool()
    inputs = {k: batch[k] for k in ("input_ids", "token_type_ids", "attention_mask")}

    with torch.no_grad():
        (ours_sequence, ours_pooled), (padded_sequence, padded_pooled) = (
            m.eval().bert(**inputs) for m in (unpadded, padded)
        )
    assert_close(ours_sequence[real], padded_sequence[real])
    assert not ours_sequence[~real].any()  # zeros at the padding
    assert_close(ours_pooled, padded_pooled)

    outputs = []
    for model in (unpadded, padded):
        out = model.train()(**batch)
        out.loss.backward()
        outputs.append(out)
    ours, theirs = outputs
    assert_close(ours.mlm_logits, theirs.mlm_logits)
    assert_close(ours.nsp_logits, theirs.nsp_logits)
    for name in ("loss", "mlm_loss", "nsp_loss"):
        assert_close(getattr(ours, name), getattr(theirs, name), msg=name)
    assert (ours.mlm_count, ours.mlm_correct) == (theirs.mlm_count, theirs.mlm_correct)
    padded_gradients = _gradients(padded)
    assert _gradients(unpadded).keys() == padded_gradients.keys()
    for name, gradient in _gradients(unpadded).items():
        assert_close(gradient, padded_gradients[name], msg=name)


def test_unpadded_matches_transformers_outputs_loss_and_gradients(lengths, tmp_path):
    config = tiny_config(**NO_DROPOUT)
    reference = hf_reference(config, seed=len(lengths)).train()
    reference.save_pretrained(tmp_path)
    ours = BertForPreTraining.from_hf(tmp_path).train()
    batch = random_batch(config, seq_len=SEQ, lengths=lengths, seed=len(lengths))
    real = batch["attention_mask"].bool()
    inputs = {k: batch[k] for k in ("input_ids", "token_type_ids", "attention_mask")}

    sequence_output, pooled_output = ours.bert(**inputs)
    expected = reference.bert(**inputs)
    assert_close(sequence_output[real], expected.last_hidden_state[real])
    assert_close(pooled_output, expected.pooler_output)

    out = ours(**batch)
    labels = {"labels": batch["mlm_labels"], "next_sentence_label": batch["next_sentence_label"]}
    expected = reference(**inputs, **labels)
    assert_close(out.mlm_logits, expected.prediction_logits[batch["mlm_labels"] != IGNORE_INDEX])
    assert_close(out.loss, expected.loss)
    ours.zero_grad()
    reference.zero_grad()
    out.loss.backward()
    expected.loss.backward()
    ours_gradients = _hf_named_gradients(ours)
    for name, parameter in reference.named_parameters():
        assert_close(ours_gradients[name], parameter.grad, msg=name)


def test_every_layer_works_on_the_real_tokens_only():
    """Shapes seen by every embedding, linear layer and LayerNorm (GELU's output feeds mlp_out)."""
    config = tiny_config()
    model = BertForPreTraining(config).train()
    seen: dict[str, tuple[int, ...]] = {}

    def record(name: str):
        def hook(module, args, output) -> None:
            seen[name] = tuple(args[0].shape)

        return hook

    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear | torch.nn.LayerNorm | torch.nn.Embedding):
            module.register_forward_hook(record(name))
    lengths = [16, 5, 9, 2]
    batch = random_batch(config, seq_len=SEQ, lengths=lengths)
    tokens, labelled = sum(lengths), int((batch["mlm_labels"] != IGNORE_INDEX).sum())
    model(**batch)
    hidden, inter = config.hidden_size, config.intermediate_size
    for name, shape in seen.items():
        if name.startswith("bert.embeddings.") and not name.endswith("norm"):
            assert shape == (tokens,), name  # word, position and token type lookups
        elif name.startswith(("bert.embeddings.", "bert.layers.")):
            assert shape == (tokens, inter if name.endswith("mlp_out") else hidden), name
        elif name.startswith("mlm_"):
            assert shape == (labelled, hidden), name
        else:
            assert shape == (len(lengths), hidden), name  # pooler and NSP head: one [CLS] per sequence
    assert len(seen) == 3 + 1 + 6 * config.num_hidden_layers + 2 + 2

    seen.clear()  # without padding: the dense path, as before
    model(**random_batch(config, seq_len=SEQ, padded=False))
    assert seen["bert.layers.0.qkv"] == (4, SEQ, hidden)
    assert seen["bert.embeddings.word"] == (4, SEQ)


def test_the_layout_of_a_batch():
    mask = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0], [1, 1, 1, 1]])
    layout = TokenLayout.of(mask)
    assert layout.indices.tolist() == [0, 1, 2, 4, 8, 9, 10, 11]
    assert layout.positions.tolist() == [0, 1, 2, 0, 0, 1, 2, 3]
    assert layout.offsets.tolist() == [0, 3, 4, 8]
    assert layout.lengths == (3, 1, 4)
    values = torch.arange(12.0).view(3, 4)
    assert layout.unpad(values).tolist() == [0, 1, 2, 4, 8, 9, 10, 11]
    assert layout.pad(layout.unpad(values)).tolist() == [[0, 1, 2, 0], [4, 0, 0, 0], [8, 9, 10, 11]]
    assert layout.first_tokens(layout.unpad(values)[:, None]).flatten().tolist() == [0, 4, 8]
    assert TokenLayout.of(torch.ones(2, 5, dtype=torch.long)) is None
    assert TokenLayout.of(None) is None


def test_a_row_without_a_real_token_is_refused():
    config = tiny_config()
    batch = random_batch(config, seq_len=SEQ, lengths=[16, 4, 5])
    batch["attention_mask"][2] = 0
    with pytest.raises(ValueError, match=r"row 2 of the batch has no real token"):
        BertForPreTraining(config)(**batch)


def test_attention_dropout_is_applied_on_the_unpadded_path():
    config = tiny_config(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.5)
    model = BertForPreTraining(config)
    batch = random_batch(config, seq_len=SEQ, lengths=[16, 5, 9, 2])
    with torch.no_grad():
        evaluated = model.eval()(**batch).mlm_logits
        torch.manual_seed(1)
        first = model.train()(**batch).mlm_logits
        torch.manual_seed(1)
        again = model(**batch).mlm_logits
    assert_close(again, first)  # the dropout masks come from torch's generator
    assert (first - evaluated).abs().max() > 1e-3  # hidden dropout is off: attention dropout did this


@pytest.mark.filterwarnings("ignore:The PyTorch API of nested tensors")  # the CPU math kernel's own
def test_nested_tensor_attention_gives_each_sequences_own_attention():
    """The CUDA path's SDPA over nested tensors, here on CPU (math kernel, which needs contiguous input)."""
    generator = torch.Generator().manual_seed(0)
    layout = TokenLayout.of(torch.tensor([[1] * 6 + [0] * 2, [1] * 3 + [0] * 5, [1] * 8]))
    q, k, v = (torch.randn(17, 2, 4, generator=generator) for _ in range(3))  # (T, nh, hs)
    output = nested_attention(q, k, v, layout, dropout_p=0.0)
    for start, end in zip(layout.offsets[:-1].tolist(), layout.offsets[1:].tolist(), strict=True):
        q_b, k_b, v_b = (t[start:end].transpose(0, 1) for t in (q, k, v))  # (nh, L, hs)
        weights = torch.softmax(q_b @ k_b.transpose(1, 2) / 2.0, dim=-1)  # scale 1/sqrt(hs)
        assert_close(output[start:end], (weights @ v_b).transpose(0, 1))


def test_compiled_layers_do_not_recompile_for_new_lengths():
    torch._dynamo.reset()
    config = tiny_config(**NO_DROPOUT)
    model = BertForPreTraining(config).train()
    counter = CompileCounterWithBackend("aot_eager")
    compile_model(model, backend=counter)
    eager = BertForPreTraining(config).train()
    eager.load_state_dict(model.state_dict())
    batches = [
        [16, 12, 9, 5],
        [16, 16, 16, 16],
        [16, 3, 7, 11],
        [15, 1, 2, 8],
        [10, 9, 8, 7],
        [4, 4, 4, 4],
        [16, 14, 13, 2, 6],
    ]
    for seed, lengths in enumerate(batches):
        batch = random_batch(config, seq_len=SEQ, lengths=lengths, seed=seed)
        compiled_out = model(**batch)
        compiled_out.loss.backward()
        assert_close(compiled_out.loss, eager(**batch).loss)
    # The layer before and after the (uncompiled) per-sequence attention, and the dense layer: compiled once.
    assert counter.frame_count == 3


def test_training_flops_count_the_matmuls_of_an_unpadded_step():
    """The MFU numerator equals torch's own count of the step's matmul FLOPs (dropout on: SDPA's math
    kernel is made of counted matmuls); the padded path does almost twice that work here."""
    lengths = [16, 5, 9, 2]
    config = tiny_config(pad_vocab_multiple=1)  # the formula counts the true vocabulary
    batch = random_batch(config, seq_len=SEQ, lengths=lengths)
    real = torch.tensor(lengths, dtype=torch.float64)
    labelled = float((batch["mlm_labels"] != IGNORE_INDEX).sum())
    expected = config.training_flops(float(real.sum()), float(real.square().sum()), labelled, len(lengths))
    counted = {}
    for unpad in (True, False):
        model = BertForPreTraining(dataclasses.replace(config, unpad=unpad)).train()
        with FlopCounterMode(display=False) as counter:
            model(**batch).loss.backward()
        counted[unpad] = counter.get_total_flops()
    assert counted[True] == expected
    assert counted[False] > 1.9 * expected


def test_the_run_says_which_attention_padded_batches_get():
    cuda, cpu = torch.device("cuda"), torch.device("cpu")  # only named: nothing runs on them here
    config = tiny_config()
    assert "one SDPA call per sequence, attention dropout 0.1" in attention_path(config, cpu)
    assert "nested tensors through SDPA, attention dropout 0.1" in attention_path(config, cuda)
    varlen = dataclasses.replace(config, unpadded_attention="varlen")
    assert "without attention dropout (the configured 0.1 is not applied)" in attention_path(varlen, cuda)
    assert "run padded" in attention_path(dataclasses.replace(config, unpad=False), cuda)
    with pytest.raises(ValueError, match="unpadded_attention 'flash' is unknown; choose one of sdpa, varlen"):
        tiny_config(unpadded_attention="flash")
