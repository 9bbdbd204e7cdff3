"""`prepare`: corpus files -> shuffled, even Parquet shards of examples + manifest.json, on Ray tasks.

1. The driver cuts the corpus into work units by its files alone (`readers.plan_units`), so that every
   random choice, seeded by (seed, unit), is the same on any cluster; `num_blocks` only groups units into
   tasks.
2. One task per group of units reads, splits sentences, tokenizes and builds the training examples
   (`build.build_units`); random Bs come from the same unit, so no stage joins documents across the corpus.
   Held-out documents come back tokenized and are built per eval unit (`build.build_eval_unit`).
3. The driver adds up the example counts; example i of a split goes to a seeded permuted position, each task
   cuts its examples into one bucket per shard and each shard task sorts its buckets and writes the file
   (`shards`). No stage sorts or joins the corpus, so time is linear in it; each task holds one unit or one
   shard, and the driver holds counts and object references only.

Plain Ray tasks, not Ray Data: a dataset's blocks are not our units (Ray Data splits and fuses them by the
cluster's size), and its sorts and joins cost per document (706 s for 12 MB of documentation files against
about 10 s now). On any error or interrupt the tasks are told to stop (`_Tasks.stop`: not `ray.cancel`,
whose races kill Ray 2.60's driver) and, once they have, the staging directory is removed; the previous
prepared directory is replaced only once all is written.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import posixpath
import shutil
import signal
import sys
import threading
import time
import uuid

import numpy as np

from common import storage
from common.console import say, warn
from data.build import BuildSettings, build_eval_unit, build_units
from data.config import PrepareConfig
from data.errors import DataError
from data.manifest import MANIFEST_FILE, TOKENIZER_DIR, Manifest
from data.readers import WorkUnit, plan_units, resolve_corpus, unit_bytes
from data.shards import bucket_by_shard, only_bucket, shard_sizes, write_shard
from data.tokenizer import copy_tokenizer, load_tokenizer, special_token_ids, tokenizer_hash

_FILL_WARNING = 0.70
_NSP_TOLERANCE = 0.05
_CANCEL_WAIT_S = 30.0
_STOP_FILE = ".stop"


def prepare(
    corpus: list[str], tokenizer_dir: str, out_dir: str, config: PrepareConfig | None = None
) -> Manifest:
    """Prepare `corpus` with the tokenizer at `tokenizer_dir` into `out_dir` (see the module docstring).

    Writes out_dir/train/*.parquet, out_dir/eval/*.parquet (when eval_fraction > 0), out_dir/tokenizer/ and
    out_dir/manifest.json, built in a staging directory and moved into place once complete. `out_dir` may be
    a bucket URI (s3://...), which every node of a cluster can read.
    """
    config = config or PrepareConfig()
    config.validate()
    started = time.perf_counter()
    _check_out_dir(out_dir)
    files = resolve_corpus(corpus, config.input_format)
    tokenizer = load_tokenizer(tokenizer_dir)
    special_ids = special_token_ids(tokenizer)
    units = plan_units(files, config.text_field)
    settings = BuildSettings(
        input_format=files.input_format,
        documents=config.documents,
        objective=config.objective,
        max_seq_length=config.max_seq_length,
        short_seq_prob=config.short_seq_prob,
        seed=config.seed,
        eval_fraction=config.eval_fraction,
        cls_id=special_ids["cls"],
        sep_id=special_ids["sep"],
    )
    ray_started = time.perf_counter()
    ensure_ray()
    started += time.perf_counter() - ray_started  # the elapsed time is the build's, not Ray's start-up
    base = out_dir if storage.is_uri(out_dir) else os.path.abspath(out_dir)
    staging = f"{base.rstrip('/')}.partial-{uuid.uuid4().hex[:8]}"
    tasks = _Tasks(staging)
    try:
        copy_tokenizer(tokenizer_dir, storage.join(staging, TOKENIZER_DIR))
        counts, shards = _build_and_write(units, settings, tokenizer.to_str(), staging, config, tasks)
        counts["input_bytes"] = files.total_bytes
        manifest = Manifest(
            vocab_size=tokenizer.get_vocab_size(),
            tokenizer_hash=tokenizer_hash(storage.join(staging, TOKENIZER_DIR)),
            settings=config,
            special_token_ids=special_ids,
            counts=counts,
            shards=shards,
            statistics=_statistics(counts, config),
            corpus=list(corpus),
            elapsed_seconds=round(time.perf_counter() - started, 3),
        )
        storage.write_text(storage.join(staging, MANIFEST_FILE), manifest.to_json())
        with _interrupts_deferred():
            _publish(staging, out_dir)
    except BaseException:
        tasks.stop()
        raise
    finally:
        storage.remove_dir(staging)
    say(format_summary(manifest, out_dir))
    for warning in summary_warnings(manifest):
        warn(warning)
    return manifest


def ensure_ray() -> None:
    """Join the cluster in RAY_ADDRESS (or one `ray start` runs here), or start a local one on 127.0.0.1."""
    from common.local_ray import init_ray

    init_ray(include_dashboard=False)


def _build_and_write(
    units: list[WorkUnit],
    settings: BuildSettings,
    tokenizer_json: str,
    staging: str,
    config: PrepareConfig,
    tasks: _Tasks,
) -> tuple[dict, dict[str, list[str]]]:
    """Stages 2 and 3 of the module docstring -> (counts, shard paths per split)."""
    import ray

    groups = _groups(units, config.num_blocks)
    tokenizer_ref = ray.put(tokenizer_json)
    build = tasks.remote(build_units, num_returns=3)
    outputs = [build.remote(group, settings, tokenizer_ref, tasks.stopped) for group in groups]
    statistics = tasks.wait(
        [tasks.track(statistics_ref, train, held_out) for statistics_ref, train, held_out in outputs],
        "read, tokenize, build",
        [sum(unit.nbytes for unit in group) / 1e6 for group in groups],
        "MB",
    )
    unit_statistics = [unit for group in statistics for unit in group["units"]]
    counts = _corpus_counts(unit_statistics)
    split_counts = {"train": _sum_counts([group["train"] for group in statistics])}
    sources = {
        "train": [
            (train, group["train"]["examples"])
            for group, (_, train, _) in zip(statistics, outputs, strict=True)
        ]
    }
    if config.eval_fraction > 0:
        eval_units = _eval_units(groups, statistics, unit_bytes(sum(unit.nbytes for unit in units)))
        build_eval = tasks.remote(build_eval_unit, num_returns=2)
        eval_outputs = []
        for index, members in enumerate(eval_units):
            group_indexes = sorted({group for group, _ in members})
            selection = [(group_indexes.index(group), position) for group, position in members]
            held_out = [outputs[group][2] for group in group_indexes]
            eval_outputs.append(build_eval.remote(index, settings, selection, *held_out))
        eval_statistics = tasks.wait(
            [tasks.track(statistics_ref, table) for statistics_ref, table in eval_outputs],
            "build held-out",
            None,
            "units",
        )
        split_counts["eval"] = _sum_counts(eval_statistics)
        sources["eval"] = [
            (table, s["examples"]) for s, (_, table) in zip(eval_statistics, eval_outputs, strict=True)
        ]
    del outputs  # the tasks below hold what they need; the rest can leave the object store
    _check_splits(counts, split_counts, config)
    shards = {
        split: _shuffle_and_write(split_sources, staging, split, config, tasks)
        for split, split_sources in sources.items()
    }
    counts["examples"] = {split: c["examples"] for split, c in split_counts.items()}
    counts["random_next_sentence"] = {split: c["random_next_sentence"] for split, c in split_counts.items()}
    counts["tokens"] = sum(c["tokens"] for c in split_counts.values())
    counts["truncated"] = sum(c["truncated"] for c in split_counts.values())
    return counts, shards


def _groups(units: list[WorkUnit], num_blocks: int | None) -> list[list[WorkUnit]]:
    """Consecutive units per task: one each, or `num_blocks` groups."""
    if not num_blocks:
        return [[unit] for unit in units]
    return [list(part) for part in np.array_split(np.array(units, dtype=object), min(num_blocks, len(units)))]


def _eval_units(
    groups: list[list[WorkUnit]], statistics: list[dict], size: int
) -> list[list[tuple[int, int]]]:
    """The held-out documents of consecutive units, about `size` characters per eval unit (a short last one
    joins the one before), as [(group, unit's place in the group)]: the same on any grouping of the units."""
    eval_units: list[list[tuple[int, int]]] = []
    current: list[tuple[int, int]] = []
    current_chars = 0
    for group, group_statistics in enumerate(statistics):
        for position, unit in enumerate(group_statistics["units"]):
            if unit["eval_documents"] == 0:
                continue
            current.append((group, position))
            current_chars += unit["eval_chars"]
            if current_chars >= size:
                eval_units.append(current)
                current, current_chars = [], 0
    if current and eval_units and current_chars < size // 2:
        eval_units[-1].extend(current)
    elif current:
        eval_units.append(current)
    return eval_units


def _shuffle_and_write(
    sources: list[tuple[object, int]], staging: str, split: str, config: PrepareConfig, tasks: _Tasks
) -> list[str]:
    """The split's examples (tables in the object store, with their row counts, in order) -> even shards in
    a seeded order over the whole split; the shard paths relative to the prepared directory."""
    from data.hashing import stream_key

    num_examples = sum(rows for _, rows in sources)
    sizes = shard_sizes(num_examples, config.examples_per_shard)
    bounds = [0, *np.cumsum(sizes).tolist()]
    bucket = tasks.remote(bucket_by_shard if len(sizes) > 1 else only_bucket, num_returns=len(sizes))
    seed = stream_key(config.seed, "shuffle", split)
    buckets, first = [], 0
    for table, rows in sources:
        if rows:
            refs = bucket.remote(table, first, num_examples, seed, bounds)
            buckets.append(refs if len(sizes) > 1 else [refs])
            first += rows
    write = tasks.remote(write_shard)
    paths = [f"{split}/shard-{shard:05d}.parquet" for shard in range(len(sizes))]
    writes = [
        tasks.track(write.remote(storage.join(staging, path), bounds[shard], *[b[shard] for b in buckets]))
        for shard, path in enumerate(paths)
    ]
    tasks.wait(writes, f"shuffle and write {split}", None, "shards")
    return paths


def _corpus_counts(units: list[dict]) -> dict:
    documents = sum(unit["documents"] for unit in units)
    eval_documents = sum(unit["eval_documents"] for unit in units)
    return {
        "documents": documents,
        "documents_per_split": {"train": documents - eval_documents, "eval": eval_documents},
        "sentences": sum(unit["sentences"] for unit in units),
        "dropped": sum(unit["dropped"] for unit in units),
        "replaced": sum(unit["replaced"] for unit in units),
        "skipped_binary_files": [path for unit in units for path in unit["binary_files"]],
        "skipped_empty_files": [path for unit in units for path in unit["empty_files"]],
    }


def _sum_counts(parts: list[dict]) -> dict:
    return {
        key: sum(part[key] for part in parts)
        for key in ("examples", "tokens", "truncated", "random_next_sentence")
    }


def _check_splits(counts: dict, split_counts: dict, config: PrepareConfig) -> None:
    if counts["documents"] == 0:
        binary, empty = counts["skipped_binary_files"], counts["skipped_empty_files"]
        skipped = [f"{len(binary)} binary"] * bool(binary) + [f"{len(empty)} empty"] * bool(empty)
        reason = f" ({' and '.join(skipped)} files were skipped)" if skipped else ""
        raise DataError(
            f"the corpus holds no text{reason}: every document is empty; "
            "check --corpus and --format/--text-field"
        )
    if config.eval_fraction == 0:
        del counts["documents_per_split"]["eval"]
    for split, documents in counts["documents_per_split"].items():
        if documents == 0 or split_counts[split]["examples"] == 0:
            raise DataError(
                f"--eval-fraction {config.eval_fraction} left the {split} split with no document of "
                f"{counts['documents']}; change --eval-fraction (or add documents)"
            )
        if config.objective == "mlm+nsp" and split_counts[split]["random_next_sentence"] == 0:
            raise DataError(
                f"the {split} split has {documents} document(s), too short for random Bs: next sentence "
                "prediction takes its random B from another document (or a far part of a long one): add "
                "documents, lower --eval-fraction, or use --objective mlm"
            )


def _statistics(counts: dict, config: PrepareConfig) -> dict:
    examples = sum(counts["examples"].values())
    fill = counts["tokens"] / max(1, examples * config.max_seq_length)
    statistics = {
        "mean_sentences_per_document": round(counts["sentences"] / max(1, counts["documents"]), 3),
        "mean_fill": round(fill, 4),
        "padding_share": round(1 - fill, 4),
    }
    if config.objective == "mlm+nsp":
        statistics["nsp_random_share"] = round(
            sum(counts["random_next_sentence"].values()) / max(1, examples), 4
        )
    return statistics


def format_summary(manifest: Manifest, out_dir: str) -> str:
    counts, statistics = manifest.counts, manifest.statistics
    examples = ", ".join(f"{split} {n:,}" for split, n in counts["examples"].items())
    seconds = max(manifest.elapsed_seconds, 1e-9)
    length = manifest.settings.max_seq_length
    nsp = (
        f", NSP random share {statistics['nsp_random_share']:.3f}" if "nsp_random_share" in statistics else ""
    )
    return (
        f"prepared {out_dir}: {counts['documents']:,} documents "
        f"({statistics['mean_sentences_per_document']:.1f} sentences each), examples {examples}, "
        f"{counts['tokens']:,} tokens, mean fill {statistics['mean_fill'] * length:.1f} of {length} "
        f"({statistics['mean_fill']:.1%}; padding {statistics['padding_share']:.1%}){nsp}; "
        f"truncated {counts['truncated']:,}, dropped {counts['dropped']:,}, replaced {counts['replaced']:,}; "
        f"{manifest.elapsed_seconds:.1f} s, {counts['input_bytes'] / 1e6 / seconds:.2f} MB/s"
    )


def summary_warnings(manifest: Manifest) -> list[str]:
    """What in the summary a person should act on: the likely cause and the fix."""
    counts, statistics, settings = manifest.counts, manifest.statistics, manifest.settings
    warnings = []
    if statistics["mean_fill"] < _FILL_WARNING:
        per_document = statistics["mean_sentences_per_document"]
        fixes = ["--objective mlm (full sequences across documents)", "a smaller --max-seq-length"]
        if settings.documents == "blank-line" and settings.input_format in ("auto", "text"):
            fixes.insert(0, "--documents file (a whole file is one document)")
        warnings.append(
            f"examples fill {statistics['mean_fill']:.0%} of their {settings.max_seq_length} tokens, so "
            f"{statistics['padding_share']:.0%} of the model's compute would go to padding: the documents "
            "are "
            f"short ({per_document:.1f} sentences on average). Try {' or '.join(fixes)}"
        )
    share = statistics.get("nsp_random_share")
    if share is not None and abs(share - 0.5) > _NSP_TOLERANCE:
        warnings.append(
            f"the NSP random share is {share:.3f}, not 0.5: most chunks are single tokens (one-word "
            "documents or lines?), which can only take a random B. Check --format and --documents, or use "
            "--objective mlm"
        )
    binary, empty = counts["skipped_binary_files"], counts.get("skipped_empty_files", [])
    if binary:
        warnings.append(
            f"skipped {len(binary)} binary file(s), which have a NUL byte in their first 8 KiB: "
            f"{_names(binary)}"
        )
    if empty:
        warnings.append(f"skipped {len(empty)} empty file(s), with no text: {_names(empty)}")
    if counts["replaced"]:
        warnings.append(
            f"{counts['replaced']:,} bytes that are not UTF-8 were replaced with U+FFFD; if the corpus is in "
            "another encoding, convert it first (iconv -f ENCODING -t UTF-8)"
        )
    return warnings


def _names(paths: list[str]) -> str:
    """The first three paths, and how many more."""
    return ", ".join(paths[:3]) + (f" and {len(paths) - 3} more" if len(paths) > 3 else "")


@dataclasses.dataclass(frozen=True)
class _StopFile:
    """The driver's signal to its tasks to stop: a file in the staging directory, which every node that writes
    the shards can see (through `storage`, so in a bucket too). A task calls it, one look per unit of work."""

    path: str

    def __call__(self) -> bool:
        return storage.exists(self.path)

    def signal(self) -> None:
        storage.write_text(self.path, "")


class _Tasks:
    """The Ray tasks of one prepare: started stoppable, waited on with a progress line, stopped on an error or
    Ctrl-C."""

    def __init__(self, staging: str) -> None:
        self.stopped = _StopFile(storage.join(staging, _STOP_FILE))
        self.refs: list = []
        self.other_returns: dict = {}

    def remote(self, body, num_returns: int = 1):
        """`body` as a Ray task that returns None for each of its results, at once, if it starts after the
        stop (a task that was still queued)."""
        import ray

        stopped = self.stopped  # not self, whose object references would travel with every task

        def task(*args):
            if stopped():
                return None if num_returns == 1 else (None,) * num_returns
            return body(*args)

        return ray.remote(num_returns=num_returns)(task).options(name=body.__name__)

    def track(self, ref, *other_returns):
        """`ref` to wait on; `other_returns`, the other results of its task, are read only if it fails."""
        self.refs.append(ref)
        self.other_returns[ref] = other_returns
        return ref

    def wait(self, refs: list, label: str, amounts: list[float] | None, what: str) -> list:
        """The results of `refs`, printing one progress line (rewritten in place on a terminal). A failed
        task's error is raised as soon as it is known, so that the other tasks stop."""
        import ray

        amounts = amounts or [1.0] * len(refs)
        amount_of = dict(zip(refs, amounts, strict=True))
        total, done, pending, results = sum(amounts), 0.0, list(refs), {}
        started = time.perf_counter()
        while pending:
            ready, pending = ray.wait(pending, num_returns=len(pending), timeout=0.5)
            results.update(zip(ready, _results(ready), strict=True))  # small: statistics or row counts
            done += sum(amount_of[ref] for ref in ready)
            if sys.stdout.isatty():
                say(f"\r  {label}: {_progress(done, total, what, started)}", end="")
        say(f"\r  {label}: {_progress(done, total, what, started)}")
        return [results[ref] for ref in refs]

    def stop(self) -> None:
        """Stop the tasks still running or queued (they could write into the staging directory) and wait for
        them: each returns at its next unit of work (`remote`, `build_units`), none is cancelled. Ray 2.60's
        driver fails a check and dies at once, leaving the staging directory, when a task is cancelled before
        its arguments are resolved or at the moment it completes. So only a task still running
        `_CANCEL_WAIT_S` after the stop (a unit that takes longer, or a stop file that could not be written)
        is force-cancelled, and waited on for as long again: that last resort cannot hang, and ends in those
        races only when such a task completes just then. The error of a failed task is read from each of its
        results, else Ray prints it again for every one."""
        import ray

        pending = _unfinished(self.refs, 0)
        if pending:
            with contextlib.suppress(Exception):  # the fallback below still ends the tasks
                self.stopped.signal()
            pending = _unfinished(pending, _CANCEL_WAIT_S)
        if pending:
            warn(f"{len(pending)} task(s) running {_CANCEL_WAIT_S:.0f} s after the stop; cancelling them")
            for ref in pending:
                with contextlib.suppress(Exception):
                    ray.cancel(ref, force=True)
            _unfinished(pending, _CANCEL_WAIT_S)
        for ref in self.refs:
            try:
                ray.get(ref, timeout=0)  # small: statistics or a row count
            except Exception:
                for other in self.other_returns[ref]:
                    with contextlib.suppress(Exception):
                        ray.get(other, timeout=0)


def _results(refs: list) -> list:
    """The results of finished tasks; a task's DataError raised as it is (the user's error, without Ray's
    wrapping)."""
    import ray

    try:
        return ray.get(refs)
    except ray.exceptions.RayTaskError as error:
        if isinstance(error.cause, DataError):
            raise error.cause from None
        raise


def _unfinished(refs: list, timeout: float) -> list:
    """Those of `refs` whose tasks have not finished within `timeout` seconds (all of them if Ray fails)."""
    import ray

    try:
        return ray.wait(refs, num_returns=len(refs), timeout=timeout, fetch_local=False)[1]
    except Exception:
        return list(refs)


def _progress(done: float, total: float, what: str, started: float) -> str:
    seconds = time.perf_counter() - started
    number = "{:,.1f}" if what == "MB" else "{:,.0f}"
    amount = f"{number.format(done)} of {number.format(total)} {what}"
    return f"{amount} in {seconds:.1f} s ({done / max(seconds, 1e-9):,.2f} {what}/s)"


def _check_out_dir(out_dir: str) -> None:
    if storage.is_file(out_dir):
        raise DataError(
            f"--out {out_dir} is a file; give the path of a directory to write the prepared data to"
        )
    files = storage.list_files(out_dir)
    if files and MANIFEST_FILE not in files:
        raise DataError(
            f"{out_dir} exists and is not a prepared directory; choose another --out or empty it "
            "(a prepared directory, with manifest.json, is replaced)"
        )


@contextlib.contextmanager
def _interrupts_deferred():
    """Ctrl-C waits until the block is done (moving the new directory into place), then interrupts."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: received.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous if previous is not None else signal.default_int_handler)
    if received:
        raise KeyboardInterrupt


def _publish(staging: str, out_dir: str) -> None:
    """Move the finished staging directory into place; a previous prepared directory there is replaced."""
    if storage.is_uri(out_dir):
        _publish_to_bucket(staging, out_dir)
    elif os.path.isdir(out_dir):
        retired = f"{staging}.old"
        os.rename(out_dir, retired)
        os.rename(staging, out_dir)
        shutil.rmtree(retired, ignore_errors=True)
    else:
        os.makedirs(os.path.dirname(os.path.abspath(out_dir)), exist_ok=True)
        os.rename(staging, out_dir)


def _publish_to_bucket(staging: str, out_dir: str) -> None:
    """A bucket has no rename: the old manifest goes first (no reader mixes old and new shards), then the
    new files move in (server-side copies) with the manifest last, then the old files that remain go."""
    filesystem, staging_inner = storage.resolve(staging)
    _, out_inner = storage.resolve(out_dir)
    old_files = storage.list_files(out_dir)
    if MANIFEST_FILE in old_files:
        filesystem.delete_file(posixpath.join(out_inner, MANIFEST_FILE))
    new_files = storage.list_files(staging)
    for relative in sorted(new_files, key=lambda path: path == MANIFEST_FILE):
        filesystem.move(posixpath.join(staging_inner, relative), posixpath.join(out_inner, relative))
    for relative in set(old_files) - set(new_files):
        filesystem.delete_file(posixpath.join(out_inner, relative))
