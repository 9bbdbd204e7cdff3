"""Unicode normalisation and a rule-based sentence splitter (no model, no download)."""

from __future__ import annotations

import re
import unicodedata

# Words that end with a full stop without ending a sentence (compared lower-cased, without the stop).
ABBREVIATIONS = frozenset(
    [
        "mr",
        "mrs",
        "ms",
        "dr",
        "prof",
        "sr",
        "jr",
        "st",
        "vs",
        "etc",
        "e.g",
        "i.e",
        "cf",
        "al",
        "fig",
        "figs",
        "no",
        "nos",
        "vol",
        "eq",
        "approx",
        "dept",
        "inc",
        "ltd",
        "co",
        "corp",
        "jan",
        "feb",
        "mar",
        "apr",
        "jun",
        "jul",
        "aug",
        "sep",
        "sept",
        "oct",
        "nov",
        "dec",
        "u.s",
        "u.k",
        "p",
        "pp",
        "ch",
        "sec",
        "ed",
        "eds",
    ]
)
# A candidate boundary: terminal punctuation, optional closing quotes/brackets, whitespace, then what may
# start a sentence (a capital, a digit, an opening quote or bracket).
_BOUNDARY = re.compile(r"""([.!?…]+["'”’)\]]*)\s+(?=["'“‘(\[]?[A-Z0-9À-ÖØ-Þ])""")
_BLANK_LINE = re.compile(r"\n[ \t\r\f\v]*\n")


def normalize_text(text: str) -> str:
    """NFC-normalise and drop control characters other than newlines and tabs."""
    text = unicodedata.normalize("NFC", text)
    if text.replace("\n", "").replace("\t", "").isprintable():  # the common case, at C speed
        return text
    dropped = [ch for ch in set(text) if not (ch in "\n\t " or ch.isprintable())]  # per distinct character
    return text.translate(dict.fromkeys(map(ord, dropped)))


def split_sentences(paragraph: str) -> list[str]:
    """Split one paragraph of running text into sentences."""
    paragraph = _single_spaced(paragraph)
    if not paragraph:
        return []
    sentences: list[str] = []
    start = 0
    for boundary in _BOUNDARY.finditer(paragraph):
        end = boundary.end(1)
        if _is_abbreviation(paragraph[start:end]):
            continue
        sentences.append(paragraph[start:end].strip())
        start = boundary.end()
    tail = paragraph[start:].strip()
    if tail:
        sentences.append(tail)
    return sentences


def _single_spaced(text: str) -> str:
    r"""Runs of whitespace as one space, none at the ends: `re.sub(r"\s+", " ", text).strip()` (str.split's
    whitespace is the regex's \s) at C speed."""
    return " ".join(text.split())


def _is_abbreviation(candidate: str) -> bool:
    """True when `candidate` ends in a stop that belongs to an abbreviation or an initial ("J. Smith")."""
    if not candidate.endswith("."):
        return False
    word = candidate[candidate.rfind(" ") + 1 : -1].lstrip("\"'“‘([").lower()  # single spaces only, here
    return word in ABBREVIATIONS or (len(word) == 1 and word.isalpha())


def document_sentences(text: str, one_sentence_per_line: bool) -> list[str]:
    """The sentences of a document: its lines (BERT format), or the sentences of its paragraphs (blocks of
    lines between blank lines, their lines joined: wrapped text keeps its sentences whole)."""
    if one_sentence_per_line:
        return [sentence for line in text.splitlines() if (sentence := _single_spaced(line))]
    return [sentence for paragraph in _BLANK_LINE.split(text) for sentence in split_sentences(paragraph)]
