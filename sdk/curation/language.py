"""Language identification with py3langid (Lui & Baldwin's langid.py; its model ships in the package).

Documents are classified whole; with `paragraphs: true` each blank-line separated paragraph of at
least `min_paragraph_chars` characters is classified too (shorter ones take the document's language:
a few words are too little evidence).
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Any

from .config import LanguageConfig

UNKNOWN = "unknown"
_PARAGRAPH_SPLIT = re.compile(r"(\n\s*\n)")


@lru_cache(maxsize=1)
def _identifier() -> Any:
    from py3langid.langid import MODEL_FILE, LanguageIdentifier

    return LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)


def identify(text: str, min_confidence: float) -> tuple[str, float]:
    """(ISO 639-1 code, probability) of `text`; `unknown` below `min_confidence` or without letters."""
    if not any(c.isalpha() for c in text):
        return UNKNOWN, 0.0
    lang, prob = _identifier().classify(text)
    return (lang if prob >= min_confidence else UNKNOWN), float(prob)


def filter_paragraphs(text: str, doc_lang: str, config: LanguageConfig) -> tuple[str, list[str]]:
    """(`text` without paragraphs in languages outside `config.languages`, the languages of those removed).

    Separators between kept paragraphs are kept as written, so an all-kept text comes back unchanged."""
    pieces = _PARAGRAPH_SPLIT.split(text)  # paragraph, separator, paragraph, ...
    out: list[str] = []
    removed: list[str] = []
    for i in range(0, len(pieces), 2):
        para = pieces[i]
        lang = doc_lang
        if len(para.strip()) >= config.min_paragraph_chars:
            lang, _ = identify(para, config.min_confidence)
        if lang not in (*config.languages, UNKNOWN):
            removed.append(lang)
            continue
        if out and i > 0:
            out.append(pieces[i - 1])
        out.append(para)
    return ("".join(out), removed) if removed else (text, [])


def paragraph_languages(text: str, doc_lang: str, config: LanguageConfig) -> list[str]:
    """The languages of `text`'s paragraphs, in order of first appearance (tag mode)."""
    seen: dict[str, None] = {}
    for para in _PARAGRAPH_SPLIT.split(text)[::2]:
        lang = doc_lang
        if len(para.strip()) >= config.min_paragraph_chars:
            lang, _ = identify(para, config.min_confidence)
        seen.setdefault(lang, None)
    return list(seen)
