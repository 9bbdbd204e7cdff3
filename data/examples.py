"""Examples from the sentences of one document, as the original BERT data builder makes them.

`plan_pair_examples` follows `create_instances_from_document` of google-research/bert: segments of whole
sentences up to a target length (shorter with probability `short_seq_prob`), A a random prefix of the segment,
B the rest (the true continuation) or, half the time, a span from another document, with the unused sentences
put back. The random B is only planned here (which document, where), because the other document may live in
another block; `take_random_b` fills it in once that document is at hand. `pack_sentences` is the "mlm"
objective (RoBERTa's FULL-SENTENCES within a document).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np

NSP_CONTINUATION, NSP_RANDOM = 0, 1
"""next_sentence_label values, as in HF BertForPreTraining: 0 = B follows A, 1 = B is random."""


@dataclass
class PairPlan:
    tokens_a: list[int]
    """Sentence A: whole sentences from the start of the segment."""
    tokens_b: list[int]
    """Sentence B when it is the true continuation; empty while a random B is still to be taken."""
    next_sentence_label: int
    """NSP_CONTINUATION or NSP_RANDOM."""
    donor_index: int = -1
    """For a random B: the index of the other document in the split's document table."""
    donor_start_share: float = 0.0
    """For a random B: where it starts in the other document, as a share of that document's sentences."""
    target_b_length: int = 0
    """For a random B: take sentences until B has at least this many tokens."""


def plan_pair_examples(
    sentences: list[list[int]],
    document_index: int,
    num_documents: int,
    max_num_tokens: int,
    short_seq_prob: float,
    rng: random.Random,
) -> list[PairPlan]:
    """The sentence-pair examples of one document (its sentences as token ids), random Bs only planned."""
    target_seq_length = max_num_tokens
    if rng.random() < short_seq_prob:
        target_seq_length = rng.randint(2, max_num_tokens)
    plans: list[PairPlan] = []
    chunk: list[list[int]] = []
    chunk_length = 0
    i = 0
    while i < len(sentences):
        chunk.append(sentences[i])
        chunk_length += len(sentences[i])
        if i == len(sentences) - 1 or chunk_length >= target_seq_length:
            a_end = rng.randint(1, len(chunk) - 1) if len(chunk) >= 2 else 1
            tokens_a = [token for sentence in chunk[:a_end] for token in sentence]
            if len(chunk) == 1 or rng.random() < 0.5:
                donor_index = document_index
                for _ in range(10):
                    donor_index = rng.randrange(num_documents)
                    if donor_index != document_index:
                        break
                plans.append(
                    PairPlan(
                        tokens_a,
                        [],
                        NSP_RANDOM,
                        donor_index=donor_index,
                        donor_start_share=rng.random(),
                        target_b_length=max(1, target_seq_length - len(tokens_a)),
                    )
                )
                # The sentences after A were not used: they start the next segment.
                i -= len(chunk) - a_end
            else:
                tokens_b = [token for sentence in chunk[a_end:] for token in sentence]
                plans.append(PairPlan(tokens_a, tokens_b, NSP_CONTINUATION))
            chunk = []
            chunk_length = 0
        i += 1
    return plans


def take_random_b(donor_sentences: list[list[int]], start_share: float, target_b_length: int) -> list[int]:
    """Whole sentences of the other document from a random start until B reaches its target length."""
    tokens_b: list[int] = []
    for sentence in donor_sentences[int(start_share * len(donor_sentences)) :]:
        tokens_b.extend(sentence)
        if len(tokens_b) >= target_b_length:
            break
    return tokens_b


def truncate_pair(
    tokens_a: list[int], tokens_b: list[int], max_num_tokens: int, rng: random.Random
) -> tuple[list[int], list[int], bool]:
    """Trim the longer side at a random end, one token at a time, until the pair fits (BERT's rule)."""
    truncated = len(tokens_a) + len(tokens_b) > max_num_tokens
    # A side that alone exceeds the budget (a giant sentence) is cut first, so the loop stays short.
    tokens_a, tokens_b = tokens_a[:max_num_tokens], tokens_b[:max_num_tokens]
    start_a, end_a, start_b, end_b = 0, len(tokens_a), 0, len(tokens_b)
    while (end_a - start_a) + (end_b - start_b) > max_num_tokens:
        if end_a - start_a > end_b - start_b:
            if rng.random() < 0.5:
                start_a += 1
            else:
                end_a -= 1
        elif rng.random() < 0.5:
            start_b += 1
        else:
            end_b -= 1
    return tokens_a[start_a:end_a], tokens_b[start_b:end_b], truncated


def assemble_pair(
    tokens_a: list[int], tokens_b: list[int], cls_id: int, sep_id: int
) -> tuple[np.ndarray, np.ndarray]:
    """`[CLS] A [SEP] B [SEP]` as int32 input_ids and int8 token_type_ids (0 for A's part, 1 for B's)."""
    input_ids = np.array([cls_id, *tokens_a, sep_id, *tokens_b, sep_id], dtype=np.int32)
    token_type_ids = np.zeros(len(input_ids), dtype=np.int8)
    token_type_ids[len(tokens_a) + 2 :] = 1
    return input_ids, token_type_ids


def pack_sentences(sentences: list[list[int]], max_num_tokens: int) -> list[tuple[list[int], bool]]:
    """Whole sentences packed into sequences of at most `max_num_tokens`, each with whether it was truncated
    (a sentence longer than the budget is cut to fit)."""
    sequences: list[tuple[list[int], bool]] = []
    current: list[int] = []
    current_truncated = False
    for sentence in sentences:
        truncated = len(sentence) > max_num_tokens
        sentence = sentence[:max_num_tokens]
        if current and len(current) + len(sentence) > max_num_tokens:
            sequences.append((current, current_truncated))
            current, current_truncated = [], False
        current.extend(sentence)
        current_truncated |= truncated
    if current:
        sequences.append((current, current_truncated))
    return sequences
