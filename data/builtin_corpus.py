"""The embedded default corpus: the docstrings of the installed Python's standard library, read with `ast`.

No download: written once as a BERT-format text file (a sentence a line, a blank line between documents, one
document per module) into a cache directory and reused. Deterministic for a given Python installation.
"""

from __future__ import annotations

import ast
import os
import sys
import sysconfig
import tempfile
import warnings

from data.sentences import split_sentences

_SKIPPED_DIRS = {
    "test",
    "tests",
    "idlelib",
    "site-packages",
    "dist-packages",
    "lib2to3",
    "turtledemo",
    "__pycache__",
}


def builtin_corpus_path(cache_dir: str | None = None) -> str:
    """Path of the builtin corpus, written on first use into `cache_dir` (default ~/.cache/bert-pretrain)."""
    cache_dir = cache_dir or os.path.join(os.path.expanduser("~"), ".cache", "bert-pretrain")
    version = f"{sys.version_info.major}.{sys.version_info.minor}.{sys.version_info.micro}"
    path = os.path.join(cache_dir, f"builtin-stdlib-docstrings-py{version}.txt")
    if not os.path.exists(path):
        os.makedirs(cache_dir, exist_ok=True)
        handle, temporary = tempfile.mkstemp(dir=cache_dir, suffix=".partial")
        with os.fdopen(handle, "w", encoding="utf-8") as file:
            for document in _stdlib_documents(sysconfig.get_paths()["stdlib"]):
                file.write("\n".join(document) + "\n\n")
        os.replace(temporary, path)  # atomic: a reader never sees half a file
    return path


def _stdlib_documents(stdlib_dir: str):
    """One list of sentences per module with docstrings, in sorted path order."""
    for root, dirs, names in os.walk(stdlib_dir):
        dirs[:] = sorted(d for d in dirs if d not in _SKIPPED_DIRS and not d.startswith("."))
        for name in sorted(names):
            if name.endswith(".py"):
                sentences = _module_sentences(os.path.join(root, name))
                if len(sentences) >= 2:
                    yield sentences


def _module_sentences(path: str) -> list[str]:
    try:
        with open(path, encoding="utf-8") as file, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            tree = ast.parse(file.read())
    except (SyntaxError, UnicodeDecodeError, ValueError):
        return []
    sentences: list[str] = []
    nodes = (tree, *(n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.ClassDef)))
    for node in nodes:
        docstring = ast.get_docstring(node, clean=True)
        if docstring:
            sentences.extend(_prose_sentences(docstring))
    return sentences


def _prose_sentences(docstring: str) -> list[str]:
    """Sentences of the prose paragraphs of a docstring (code examples and indented blocks left out)."""
    sentences = []
    for paragraph in docstring.split("\n\n"):
        lines = paragraph.splitlines()
        if not lines or lines[0].startswith((" ", "\t", ">>>", "...")):
            continue
        sentences.extend(split_sentences(" ".join(line.strip() for line in lines)))
    return sentences
