"""BERT's sentence-pair rules, checked against a transcription of google-research/bert.

`bert_truncate_seq_pair` and `bert_instances_from_document` below follow `truncate_seq_pair` and the pair
loop of `create_instances_from_document` in google-research/bert's `create_pretraining_data.py` (Apache 2.0,
commit d4526127) statement by statement, with one seeded `random.Random` as there: the target length with
`short_seq_prob`, the chunk of whole sentences, `a_end`, the random next from another document, the unused
sentences put back (`i -= num_unused_segments`), then the truncation. Left out: masking (`prepare` masks
nothing), the [CLS]/[SEP] assembly, and dupe_factor and the shuffles around the loop. Tokens are their own
positions in the corpus, so a list of tokens is a range, comparable with ours.

Our code cannot be compared draw for draw: `plan_pairs` takes its decisions from a `random.Random` in
another order (it always draws the NSP coin, it draws the other document with one `randrange`, and it limits
where a random B may start: see data/examples.py), and `truncate_pairs` draws how many tokens come off the
front with `numpy` binomials instead of one coin per token. So the tests feed BERT's decisions into ours:
- `plan_pairs` runs on a replaying RNG that answers each of its draws with the decision BERT took there and
  fails when ours asks for a draw BERT did not make (or with other bounds: `randint(1, len(chunk) - 1)`
  carries the chunk's size). Then every chunk, A, label, continuation B and the sentences put back must be
  BERT's exactly; a random B too, unless BERT started it where ours never starts one (too near the end of
  the other document to reach its target), where ours must start earlier and reach the target.
- `truncate_pairs` gets, as its binomial draws, how many tokens BERT took off each side's front: the sides
  and counts it asks about must be BERT's (the longer side, B on a tie) and the ranges left must be BERT's.
"""

from __future__ import annotations

import random
from collections import deque

import numpy as np
import pytest

from data.examples import NSP_CONTINUATION, NSP_RANDOM, TokenizedDocuments, plan_pairs, truncate_pairs

# ---- transcription of google-research/bert create_pretraining_data.py ----


def bert_truncate_seq_pair(tokens_a, tokens_b, max_num_tokens, rng):
    while True:
        total_length = len(tokens_a) + len(tokens_b)
        if total_length <= max_num_tokens:
            break

        trunc_tokens = tokens_a if len(tokens_a) > len(tokens_b) else tokens_b
        assert len(trunc_tokens) >= 1

        if rng.random() < 0.5:
            del trunc_tokens[0]
        else:
            trunc_tokens.pop()


def bert_instances_from_document(all_documents, document_index, max_num_tokens, short_seq_prob, rng):
    """BERT's loop; an instance is a dict of what it decided (the "trace" lines are not BERT's)."""
    document = all_documents[document_index]
    target_seq_length = max_num_tokens
    if rng.random() < short_seq_prob:
        target_seq_length = rng.randint(2, max_num_tokens)
    instances = []
    current_chunk = []
    current_length = 0
    i = 0
    while i < len(document):
        segment = document[i]
        current_chunk.append(segment)
        current_length += len(segment)
        if i == len(document) - 1 or current_length >= target_seq_length:
            if current_chunk:
                a_end = 1
                if len(current_chunk) >= 2:
                    a_end = rng.randint(1, len(current_chunk) - 1)

                tokens_a = []
                for j in range(a_end):
                    tokens_a.extend(current_chunk[j])

                tokens_b = []
                is_random_next = False
                random_document_index = random_start = target_b_length = None  # trace
                if len(current_chunk) == 1 or rng.random() < 0.5:
                    is_random_next = True
                    target_b_length = target_seq_length - len(tokens_a)

                    for _ in range(10):
                        random_document_index = rng.randint(0, len(all_documents) - 1)
                        if random_document_index != document_index:
                            break

                    random_document = all_documents[random_document_index]
                    random_start = rng.randint(0, len(random_document) - 1)
                    for j in range(random_start, len(random_document)):
                        tokens_b.extend(random_document[j])
                        if len(tokens_b) >= target_b_length:
                            break
                    num_unused_segments = len(current_chunk) - a_end
                    i -= num_unused_segments
                else:
                    is_random_next = False
                    for j in range(a_end, len(current_chunk)):
                        tokens_b.extend(current_chunk[j])
                planned_a, planned_b = list(tokens_a), list(tokens_b)  # trace
                bert_truncate_seq_pair(tokens_a, tokens_b, max_num_tokens, rng)

                assert len(tokens_a) >= 1
                assert len(tokens_b) >= 1
                instances.append(  # trace: BERT assembles, masks and appends a TrainingInstance here
                    dict(
                        target=target_seq_length,
                        chunk_sentences=len(current_chunk),
                        a_end=a_end,
                        is_random_next=is_random_next,
                        random_document=random_document_index,
                        random_start=random_start,
                        target_b=target_b_length,
                        planned_a=planned_a,
                        planned_b=planned_b,
                        tokens_a=tokens_a,
                        tokens_b=tokens_b,
                    )
                )
            current_chunk = []
            current_length = 0
        i += 1
    return target_seq_length, instances


# ---- feeding BERT's decisions into ours ----


class ReplayRandom:
    """Answers plan_pairs' draws from a script of (method, args, value), in order; args None (the start of a
    random B) takes BERT's sentence offset where ours allows it, else ours' last allowed one."""

    def __init__(self, script):
        self.script = deque(script)
        self.diverged_starts = 0

    def _draw(self, method, args):
        assert self.script, f"plan_pairs draws {method}{args} where BERT decided nothing"
        expected_method, expected_args, value = self.script.popleft()
        assert method == expected_method, f"plan_pairs draws {method}{args}, BERT {expected_method}"
        if expected_args is None:
            (n,) = args
            if value >= n:
                self.diverged_starts += 1
                return n - 1
            return value
        assert args == expected_args, f"plan_pairs draws {method}{args}, BERT {method}{expected_args}"
        return value

    def random(self):
        return self._draw("random", ())

    def randint(self, a, b):
        return self._draw("randint", (a, b))

    def randrange(self, n):
        return self._draw("randrange", (n,))


class FedFronts:
    """A numpy Generator stand-in for truncate_pairs: binomial(lost, 0.5) returns, per pair, how many tokens
    BERT took off the front of that side; it checks that the sides are asked in order A then B with BERT's
    counts."""

    def __init__(self, lost_a, front_a, lost_b, front_b):
        self.calls = [(lost_a, front_a), (lost_b, front_b)]

    def binomial(self, n, p):
        assert self.calls, "truncate_pairs draws more than a front count per side"
        lost, front = self.calls.pop(0)
        assert p == 0.5
        np.testing.assert_array_equal(n, lost, err_msg="tokens lost per side differ from BERT's")
        return np.asarray(front)


def _random_corpus(rng: random.Random, max_num_tokens: int) -> list[list[list[int]]]:
    """2-6 documents of 1-14 sentences, tokens numbered by their position in the corpus."""
    documents, position = [], 0
    for _ in range(rng.randint(2, 6)):
        document = []
        for _ in range(rng.randint(1, 14)):
            length = rng.randint(1, max_num_tokens if rng.random() < 0.1 else max(1, max_num_tokens // 3))
            document.append(list(range(position, position + length)))
            position += length
        documents.append(document)
    return documents


def _as_tokenized(documents) -> TokenizedDocuments:
    sentences = [s for d in documents for s in d]
    return TokenizedDocuments(
        tokens=np.arange(sum(map(len, sentences)), dtype=np.int32),
        sentence_lengths=np.array([len(s) for s in sentences], np.int64),
        document_sentences=np.array([len(d) for d in documents], np.int64),
        document_chars=np.array([sum(map(len, d)) for d in documents], np.int64),
    )


def _replay_script(documents, bert, max_num_tokens):
    """Our draws, in our order, answered with BERT's decisions: per document the short-target coin (and the
    target), per chunk a_end (with the chunk's size), the NSP coin, the other document and B's start."""
    script = []
    for d, (target, instances) in enumerate(bert):
        script.append(("random", (), 0.0 if target < max_num_tokens else 0.999))
        if target < max_num_tokens:
            script.append(("randint", (2, max_num_tokens), target))
        for instance in instances:
            if instance["chunk_sentences"] >= 2:
                script.append(("randint", (1, instance["chunk_sentences"] - 1), instance["a_end"]))
            script.append(("random", (), 0.0 if instance["is_random_next"] else 0.999))
            if instance["is_random_next"]:
                other = instance["random_document"]
                script.append(("randrange", (len(documents) - 1,), other - (other > d)))
                script.append(("randrange", None, instance["random_start"]))
    return script


def _range(tokens: list[int]) -> tuple[int, int]:
    assert tokens == list(range(tokens[0], tokens[0] + len(tokens)))
    return tokens[0], len(tokens)


@pytest.mark.parametrize("short_seq_prob", [0.1, 0.5])
def test_plan_and_truncation_take_berts_decisions_to_berts_pairs(short_seq_prob):
    compared = {"examples": 0, "random_b_exact": 0, "random_b_diverged": 0, "truncated": 0}
    skipped = 0
    for seed in range(300):
        corpus_rng = random.Random(seed)
        max_num_tokens = corpus_rng.randint(4, 40)
        documents = _random_corpus(corpus_rng, max_num_tokens)
        rng = random.Random(1000 + seed)
        bert = [
            bert_instances_from_document(documents, d, max_num_tokens, short_seq_prob, rng)
            for d in range(len(documents))
        ]
        instances = [instance for _, doc_instances in bert for instance in doc_instances]
        if any(
            i["is_random_next"] and i["random_document"] == d
            for d, (_, doc_instances) in enumerate(bert)
            for i in doc_instances
        ):
            skipped += 1  # BERT gave up after 10 draws and took B from the same document; ours never does
            continue

        replay = ReplayRandom(_replay_script(documents, bert, max_num_tokens))
        planned = plan_pairs(_as_tokenized(documents), max_num_tokens, short_seq_prob, replay)
        assert not replay.script, "plan_pairs left decisions of BERT's unused"
        assert len(planned) == len(instances)

        for row, instance in zip(planned, instances, strict=True):
            a_start, a_length, b_start, b_length, label = (int(v) for v in row)
            assert (a_start, a_length) == _range(instance["planned_a"])
            assert label == (NSP_RANDOM if instance["is_random_next"] else NSP_CONTINUATION)
            bert_b = _range(instance["planned_b"])
            if (b_start, b_length) == bert_b:
                compared["random_b_exact" if label == NSP_RANDOM else "examples"] += 1
                continue
            # Only a random B that BERT starts too near the end of the other document may differ: ours
            # starts at an earlier sentence of the same document and takes whole sentences up to the target.
            assert label == NSP_RANDOM, "a continuation B differs from BERT's"
            compared["random_b_diverged"] += 1
            other = documents[instance["random_document"]]
            starts = [s[0] for s in other]
            assert b_start in starts and starts.index(b_start) < instance["random_start"]
            taken = starts.index(b_start)
            ends = np.cumsum([len(s) for s in other[taken:]])
            assert b_length in ends.tolist()
            target_b = max(1, instance["target_b"])
            assert b_length >= target_b or b_length == ends[-1]
            assert b_length - len(other[taken + list(ends).index(b_length)]) < target_b

        exact = [
            (row, instance)
            for row, instance in zip(planned, instances, strict=True)
            if (int(row[2]), int(row[3])) == _range(instance["planned_b"])
        ]
        if not exact:
            continue
        rows = np.array([row for row, _ in exact]).T
        a_after = [_range(i["tokens_a"]) for _, i in exact]
        b_after = [_range(i["tokens_b"]) for _, i in exact]
        lost_a = rows[1] - [n for _, n in a_after]
        lost_b = rows[3] - [n for _, n in b_after]
        front_a = np.array([s for s, _ in a_after]) - rows[0]
        front_b = np.array([s for s, _ in b_after]) - rows[2]
        fed = FedFronts(lost_a, front_a, lost_b, front_b)
        a_start, a_length, b_start, b_length, truncated = truncate_pairs(
            rows[0], rows[1], rows[2], rows[3], max_num_tokens, fed
        )
        assert not fed.calls
        assert list(zip(a_start.tolist(), a_length.tolist(), strict=True)) == a_after
        assert list(zip(b_start.tolist(), b_length.tolist(), strict=True)) == b_after
        assert truncated.tolist() == (rows[1] + rows[3] > max_num_tokens).tolist()
        compared["truncated"] += int(truncated.sum())

    assert skipped <= 10
    # Enough of every kind was compared for the test to mean something.
    assert compared["examples"] > 500 and compared["random_b_exact"] > 500
    assert compared["truncated"] > 200 and compared["random_b_diverged"] > 0


def test_truncation_takes_the_longer_side_and_b_on_a_tie():
    """BERT's truncate_seq_pair on many lengths, ties and one-sided excesses included."""
    rng = random.Random(0)
    pairs = [(rng.randint(1, 60), rng.randint(1, 60), rng.randint(2, 70)) for _ in range(3000)]
    pairs += [(n, n, m) for n in range(1, 12) for m in range(2, 2 * n + 2)]  # ties
    a_len, b_len, limit = (np.array(column) for column in zip(*pairs, strict=True))
    lost_a, lost_b, front_a, front_b = (np.zeros(len(pairs), np.int64) for _ in range(4))
    for k, (na, nb, m) in enumerate(pairs):
        tokens_a, tokens_b = list(range(na)), list(range(1000, 1000 + nb))
        bert_truncate_seq_pair(tokens_a, tokens_b, m, rng)
        lost_a[k], lost_b[k] = na - len(tokens_a), nb - len(tokens_b)
        front_a[k], front_b[k] = tokens_a[0], tokens_b[0] - 1000
    assert (lost_b > lost_a).any() and (lost_a > lost_b).any() and ((lost_a == lost_b) & (lost_a > 0)).any()

    # truncate_pairs takes one limit; group the pairs by theirs.
    for m in np.unique(limit):
        at = limit == m
        fed = FedFronts(lost_a[at], front_a[at], lost_b[at], front_b[at])
        starts_a, starts_b = np.zeros(at.sum(), np.int64), np.full(at.sum(), 1000)
        a_start, a_length, b_start, b_length, truncated = truncate_pairs(
            starts_a, a_len[at], starts_b, b_len[at], int(m), fed
        )
        np.testing.assert_array_equal(a_length, a_len[at] - lost_a[at])
        np.testing.assert_array_equal(b_length, b_len[at] - lost_b[at])
        np.testing.assert_array_equal(a_start, front_a[at])
        np.testing.assert_array_equal(b_start, 1000 + front_b[at])
        np.testing.assert_array_equal(truncated, a_len[at] + b_len[at] > m)


def test_truncation_cuts_front_and_back_at_random():
    """With its real generator, each token a side loses comes off its front with chance 1/2, as with BERT's
    coin per token: A of 200 and B of 100 tokens cut to 100 lose 150 and 50, and over 400 pairs the front
    counts average 75 and 25 (standard errors of the means 0.31 and 0.18)."""
    n = np.full(400, 100)
    a_start, a_length, b_start, b_length, _ = truncate_pairs(
        np.zeros(400, np.int64), n + 100, np.full(400, 10_000), n, 100, np.random.default_rng(0)
    )
    assert (a_length == 50).all() and (b_length == 50).all()
    front_a, front_b = a_start, b_start - 10_000
    assert ((front_a >= 0) & (front_a <= 150)).all() and ((front_b >= 0) & (front_b <= 50)).all()
    assert abs(front_a.mean() - 75) < 1.5 and abs(front_b.mean() - 25) < 1.5
    assert front_a.std() > 3 and front_b.std() > 2
