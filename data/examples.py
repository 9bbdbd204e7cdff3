"""Examples from tokenized documents: BERT's sentence pairs ("mlm+nsp") or full packed sequences ("mlm").

Documents arrive as flat arrays (`TokenizedDocuments`) and examples leave as Arrow columns; the only Python
loop is BERT's walk over sentences, which yields each example as token ranges (A, B); truncation and the
assembly of `[CLS] A [SEP] B [SEP]` are NumPy over all examples at once.

Sentence pairs follow `create_instances_from_document` of google-research/bert: chunks of whole sentences up
to a target length (shorter with probability `short_seq_prob`), A a random prefix of the chunk, B the rest
(the true continuation) or a span of another document with the unused sentences put back, then the longer
side trimmed at a random end until the pair fits. The other document is one of the same work unit, as NVIDIA's
BERT data preparation does by running Google's builder on each shard of the corpus. Three changes:
- Balanced NSP: the label is drawn first, 50/50. BERT forces a random B whenever a chunk holds one sentence,
  which on a corpus of one- or two-sentence documents makes most labels random (0.71 on real documentation
  files); here a continuation of a one-sentence chunk splits that sentence at a random token (A its head, B
  its tail, which does follow A). Only a one-token chunk cannot be split: it takes a random B (or, alone in
  its unit, is left out).
- A random B starts at a sentence of the other document from which enough text follows to reach B's target
  length (BERT draws from all its sentences, so a B that starts near the end comes out short: 3 points of fill
  on documents of a few sequences).
- A unit whose split holds a single document (one part of a huge file): the random B starts at a sentence at
  least a quarter of the document away from A, in either direction. A single document shorter than 8
  examples gives continuations only.
A sentence longer than a whole example (a long line without punctuation) is first cut into example-sized
pieces, so that it yields examples instead of being truncated away.

Packed sequences ("mlm") are RoBERTa's FULL-SENTENCES: the documents' sentences one after another, across
document boundaries with a [SEP] where a document ends, as `[CLS] ... [SEP]` of exactly `max_seq_length`
tokens; the sentence at the end of a sequence is cut and goes on in the next one (as `group_texts` of HF's
run_mlm does), because at 128 tokens whole sentences alone would leave a tenth of every sequence empty.
"""

from __future__ import annotations

import bisect
import random
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

NSP_CONTINUATION, NSP_RANDOM = 0, 1
"""next_sentence_label values, as in HF BertForPreTraining: 0 = B follows A, 1 = B is random."""
EXAMPLE_SCHEMA = pa.schema(
    {
        "input_ids": pa.list_(pa.int32()),
        "token_type_ids": pa.list_(pa.int8()),
        "next_sentence_label": pa.int8(),
        "truncated": pa.bool_(),
    }
)
_LONG_DOCUMENT_EXAMPLES = 8


@dataclass
class TokenizedDocuments:
    """Documents as flat arrays: document d holds `document_sentences[d]` consecutive sentences, sentence s
    holds `sentence_lengths[s]` consecutive tokens."""

    tokens: np.ndarray
    """int32[T]: every token id, document after document."""
    sentence_lengths: np.ndarray
    """int64[S]: tokens per sentence (all > 0)."""
    document_sentences: np.ndarray
    """int64[D]: sentences per document (all > 0)."""
    document_chars: np.ndarray
    """int64[D]: characters of text each document came from."""

    @property
    def num_documents(self) -> int:
        return len(self.document_sentences)

    def select(self, keep: np.ndarray) -> TokenizedDocuments:
        """The documents where `keep` (bool[D]) is true."""
        sentence_keep = np.repeat(keep, self.document_sentences)
        token_keep = np.repeat(sentence_keep, self.sentence_lengths)
        return TokenizedDocuments(
            self.tokens[token_keep],
            self.sentence_lengths[sentence_keep],
            self.document_sentences[keep],
            self.document_chars[keep],
        )

    @classmethod
    def concatenate(cls, parts: list[TokenizedDocuments]) -> TokenizedDocuments:
        return cls(
            np.concatenate([p.tokens for p in parts]).astype(np.int32),
            np.concatenate([p.sentence_lengths for p in parts]).astype(np.int64),
            np.concatenate([p.document_sentences for p in parts]).astype(np.int64),
            np.concatenate([p.document_chars for p in parts]).astype(np.int64),
        )


def split_long_sentences(documents: TokenizedDocuments, limit: int) -> TokenizedDocuments:
    """Cut every sentence longer than `limit` tokens into pieces of `limit` (the last one shorter)."""
    lengths = documents.sentence_lengths
    if len(lengths) == 0 or lengths.max() <= limit:
        return documents
    pieces = -(-lengths // limit)
    first_piece = np.repeat(np.cumsum(pieces) - pieces, pieces)
    piece_index = np.arange(pieces.sum()) - first_piece
    parent_length = np.repeat(lengths, pieces)
    new_lengths = np.minimum(limit, parent_length - piece_index * limit)
    sentence_document = np.repeat(np.arange(documents.num_documents), documents.document_sentences)
    new_counts = np.bincount(sentence_document, weights=pieces, minlength=documents.num_documents)
    return TokenizedDocuments(
        documents.tokens, new_lengths.astype(np.int64), new_counts.astype(np.int64), documents.document_chars
    )


def pair_examples(
    documents: TokenizedDocuments,
    max_seq_length: int,
    short_seq_prob: float,
    seed: int,
    cls_id: int,
    sep_id: int,
) -> pa.Table:
    """BERT's sentence-pair examples of `documents` (see the module docstring), as EXAMPLE_SCHEMA rows."""
    if documents.num_documents == 0:
        return EXAMPLE_SCHEMA.empty_table()
    max_num_tokens = max_seq_length - 3
    documents = split_long_sentences(documents, max_num_tokens)
    ranges = plan_pairs(documents, max_num_tokens, short_seq_prob, random.Random(seed))
    a_start, a_length, b_start, b_length, labels = ranges.T
    a_start, a_length, b_start, b_length, truncated = truncate_pairs(
        a_start, a_length, b_start, b_length, max_num_tokens, np.random.default_rng(seed)
    )
    cls_at, sep_at = len(documents.tokens), len(documents.tokens) + 1
    n = len(labels)
    one = np.ones(n, np.int64)
    starts = np.stack([np.full(n, cls_at), a_start, np.full(n, sep_at), b_start, np.full(n, sep_at)], axis=1)
    lengths = np.stack([one, a_length, one, b_length, one], axis=1)
    types = np.broadcast_to(np.array([0, 0, 0, 1, 1], np.int8), starts.shape)
    source = np.concatenate([documents.tokens, np.array([cls_id, sep_id], np.int32)])
    return _examples_table(source, starts, lengths, types, labels, truncated)


def packed_examples(documents: TokenizedDocuments, max_seq_length: int, cls_id: int, sep_id: int) -> pa.Table:
    """Full sequences `[CLS] ... [SEP]` across documents, a [SEP] between documents ("mlm")."""
    if documents.num_documents == 0:
        return EXAMPLE_SCHEMA.empty_table()
    first_sentence = np.cumsum(documents.document_sentences) - documents.document_sentences
    document_ends = np.cumsum(np.add.reduceat(documents.sentence_lengths, first_sentence))
    stream = np.insert(documents.tokens, document_ends[:-1], sep_id).astype(np.int32)
    window = max_seq_length - 2
    n = -(-len(stream) // window)
    window_start = np.arange(n, dtype=np.int64) * window
    window_length = np.minimum(window, len(stream) - window_start)
    one = np.ones(n, np.int64)
    starts = np.stack([np.full(n, len(stream)), window_start, np.full(n, len(stream) + 1)], axis=1)
    lengths = np.stack([one, window_length, one], axis=1)
    source = np.concatenate([stream, np.array([cls_id, sep_id], np.int32)])
    types = np.zeros(starts.shape, np.int8)
    labels = np.full(n, NSP_CONTINUATION)
    return _examples_table(source, starts, lengths, types, labels, np.zeros(n, bool))


def plan_pairs(
    documents: TokenizedDocuments, max_num_tokens: int, short_seq_prob: float, rng: random.Random
) -> np.ndarray:
    """BERT's walk over each document's sentences -> int64[E, 5]: (A start, A length, B start, B length,
    label), A and B as ranges of `documents.tokens`, before truncation."""
    lengths = documents.sentence_lengths.tolist()
    token_at = np.concatenate([[0], np.cumsum(documents.sentence_lengths)]).tolist()  # sentence -> token
    first_sentence = np.concatenate([[0], np.cumsum(documents.document_sentences)]).tolist()
    num_documents = documents.num_documents
    examples: list[tuple[int, int, int, int, int]] = []
    for document in range(num_documents):
        first, end = first_sentence[document], first_sentence[document + 1]
        target = max_num_tokens
        if rng.random() < short_seq_prob:
            target = rng.randint(2, max_num_tokens)
        chunk_first, chunk_tokens, sentence = first, 0, first
        while sentence < end:
            chunk_tokens += lengths[sentence]
            if sentence == end - 1 or chunk_tokens >= target:
                chunk_sentences = sentence - chunk_first + 1
                a_sentences = rng.randint(1, chunk_sentences - 1) if chunk_sentences >= 2 else 1
                a_start, a_end = token_at[chunk_first], token_at[chunk_first + a_sentences]
                random_b = rng.random() < 0.5
                if not random_b and chunk_sentences == 1 and chunk_tokens == 1:
                    random_b = True  # one token: nothing to split
                b = None
                if random_b:
                    target_b = max(1, target - (a_end - a_start))
                    if num_documents >= 2:
                        other = rng.randrange(num_documents - 1)
                        other += other >= document
                        low, high = first_sentence[other], first_sentence[other + 1]
                        # A start from which enough text follows (else the last one that can be).
                        latest = bisect.bisect_right(token_at, token_at[high] - target_b, low, high) - 1
                        start = low + rng.randrange(max(1, latest - low + 1))
                    elif token_at[end] - token_at[first] >= _LONG_DOCUMENT_EXAMPLES * max_num_tokens:
                        low, high = first, end
                        start = _far_sentence(first, end, chunk_first, chunk_sentences, rng)
                    else:
                        start = None
                    if start is not None:
                        stop = start
                        while stop < high and token_at[stop] - token_at[start] < target_b:
                            stop += 1
                        b = (token_at[start], token_at[stop] - token_at[start])
                        examples.append((a_start, a_end - a_start, *b, NSP_RANDOM))
                        sentence = chunk_first + a_sentences - 1  # the unused sentences start the next chunk
                if b is None and chunk_sentences >= 2:
                    b_start, b_end = a_end, token_at[sentence + 1]
                    examples.append((a_start, a_end - a_start, b_start, b_end - b_start, NSP_CONTINUATION))
                elif b is None and chunk_tokens >= 2:  # a one-sentence chunk: A is its head, B the rest
                    cut = a_start + rng.randint(1, chunk_tokens - 1)
                    examples.append(
                        (a_start, cut - a_start, cut, a_start + chunk_tokens - cut, NSP_CONTINUATION)
                    )
                chunk_first, chunk_tokens = sentence + 1, 0
            sentence += 1
    return np.array(examples, dtype=np.int64).reshape(-1, 5)


def _far_sentence(first: int, end: int, chunk_first: int, chunk_sentences: int, rng: random.Random):
    """A sentence of the document [first, end) at least a quarter of it (and the chunk's length) away from
    the chunk, cyclically; None when it has too few sentences for one."""
    count = end - first
    far = max(chunk_sentences, count // 4)
    if count - 2 * far < 0:
        return None
    distance = far + rng.randrange(count - 2 * far + 1)
    return first + (chunk_first - first + distance) % count


def truncate_pairs(
    a_start: np.ndarray,
    a_length: np.ndarray,
    b_start: np.ndarray,
    b_length: np.ndarray,
    max_num_tokens: int,
    rng: np.random.Generator,
):
    """BERT's `truncate_seq_pair` for all pairs at once: it removes one token at a time from the longer side
    (B on a tie), from the front or the back with equal chance, until A + B fits. How many tokens each side
    loses follows from the lengths; how many of them come off the front is Binomial(lost, 1/2)."""
    excess = np.maximum(0, a_length + b_length - max_num_tokens)
    a_longer = a_length > b_length
    first_phase = np.minimum(excess, np.abs(a_length - b_length))
    rest = excess - first_phase  # then the sides are equal and lose a token in turn, B first
    lost_a = np.where(a_longer, first_phase, 0) + rest // 2
    lost_b = np.where(a_longer, 0, first_phase) + (rest + 1) // 2
    front_a, front_b = rng.binomial(lost_a, 0.5), rng.binomial(lost_b, 0.5)
    return a_start + front_a, a_length - lost_a, b_start + front_b, b_length - lost_b, excess > 0


def _examples_table(source, starts, lengths, types, labels, truncated) -> pa.Table:
    """Rows whose tokens are pieces of `source`: row r is the concatenation of source[starts[r, k] :
    starts[r, k] + lengths[r, k]] over k; each piece's tokens take the token type types[r, k]."""
    flat_starts, flat_lengths = starts.ravel(), lengths.ravel()
    piece_offset = np.cumsum(flat_lengths) - flat_lengths
    total = int(flat_lengths.sum())
    gather = np.repeat(flat_starts - piece_offset, flat_lengths) + np.arange(total)
    row_offsets = np.concatenate([[0], np.cumsum(lengths.sum(axis=1))]).astype(np.int32)
    offsets = pa.array(row_offsets)
    return pa.table(
        {
            "input_ids": pa.ListArray.from_arrays(offsets, pa.array(source[gather])),
            "token_type_ids": pa.ListArray.from_arrays(
                offsets, pa.array(np.repeat(types.ravel(), flat_lengths))
            ),
            "next_sentence_label": pa.array(labels.astype(np.int8)),
            "truncated": pa.array(np.asarray(truncated, bool)),
        },
        schema=EXAMPLE_SCHEMA,
    )
