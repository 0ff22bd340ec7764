"""Quality filters: Gopher's heuristics and repetition rules, C4's boilerplate rules.

Gopher: Rae et al. 2021, "Scaling Language Models: Methods, Analysis & Insights from Training
Gopher" (arXiv:2112.11446), appendix A.1.1 "MassiveWeb" quality filters and table A1 repetition
thresholds. C4: Raffel et al. 2020, "Exploring the Limits of Transfer Learning with a Unified
Text-to-Text Transformer" (JMLR 21), section 2.2 "The Colossal Clean Crawled Corpus".

Every rule returns a reason key (`quality.min_words`, `repetition.dup_line_fraction`, ...) and a
detail naming the measured value and the threshold; a document fails on the first rule it breaks.
"""

from __future__ import annotations

import re
from collections import Counter

from .config import QualityConfig, RepetitionConfig

#: Gopher's stop words: a document must contain at least `min_stop_words` of them.
STOP_WORDS = frozenset({"the", "be", "to", "of", "and", "that", "have", "with"})
BULLETS = ("•", "●", "○", "◦", "‣", "▪", "■", "□", "-", "*", "–", "—")
ELLIPSES = ("...", "…")
#: C4 removed any line containing one of these (case-insensitive): cookie and policy notices, and
#: lines mentioning javascript (usually "please enable javascript").
C4_BOILERPLATE = ("javascript", "terms of use", "privacy policy", "cookie policy", "uses cookies",
                  "use of cookies", "use cookies")
_PARAGRAPHS = re.compile(r"\n\s*\n")
_PUNCT_EDGES = re.compile(r"^\W+|\W+$")

Failure = tuple[str, str]  # (reason key, detail)


def remove_boilerplate_lines(text: str) -> tuple[str, int]:
    """`text` without C4's boilerplate lines, and how many lines were removed."""
    kept, removed = [], 0
    for line in text.split("\n"):
        low = line.lower()
        if any(marker in low for marker in C4_BOILERPLATE):
            removed += 1
        else:
            kept.append(line)
    return ("\n".join(kept), removed) if removed else (text, 0)


def quality_failure(text: str, config: QualityConfig) -> Failure | None:
    """The first quality rule `text` breaks, or None when it passes them all."""
    low = text.lower()
    if config.c4_lorem_ipsum and "lorem ipsum" in low:
        return "c4.lorem_ipsum", "contains 'lorem ipsum' (C4 drops such pages)"
    if config.c4_curly_brace and "{" in text:
        return "c4.curly_brace", "contains '{' (C4 drops such pages)"
    words = text.split()
    n = len(words)
    if n < config.min_words:
        return "quality.min_words", f"{n} words < min_words {config.min_words}"
    if n > config.max_words:
        return "quality.max_words", f"{n} words > max_words {config.max_words}"
    stripped = [w for w in (_PUNCT_EDGES.sub("", w) for w in words) if w]
    mean = sum(map(len, stripped)) / len(stripped) if stripped else 0.0
    if mean < config.min_mean_word_length:
        return "quality.mean_word_length", f"mean word length {mean:.2f} < {config.min_mean_word_length}"
    if mean > config.max_mean_word_length:
        return "quality.mean_word_length", f"mean word length {mean:.2f} > {config.max_mean_word_length}"
    if n:
        symbols = text.count("#") + text.count("...") + text.count("…")
        if symbols / n > config.max_symbol_word_ratio:
            return "quality.symbol_word_ratio", f"symbol/word ratio {symbols / n:.3f} > {config.max_symbol_word_ratio}"
    lines = [line.strip() for line in text.split("\n") if line.strip()]
    if lines:
        bullets = sum(line.startswith(BULLETS) for line in lines) / len(lines)
        if bullets > config.max_bullet_lines_fraction:
            return "quality.bullet_lines", f"{bullets:.2f} of lines start with a bullet > {config.max_bullet_lines_fraction}"
        ellipsis = sum(line.endswith(ELLIPSES) for line in lines) / len(lines)
        if ellipsis > config.max_ellipsis_lines_fraction:
            return "quality.ellipsis_lines", f"{ellipsis:.2f} of lines end with an ellipsis > {config.max_ellipsis_lines_fraction}"
    if n:
        alpha = sum(any(c.isalpha() for c in w) for w in words) / n
        if alpha < config.min_alpha_words_fraction:
            return "quality.alpha_words", f"{alpha:.2f} of words have a letter < {config.min_alpha_words_fraction}"
    if config.min_stop_words:
        found = len(STOP_WORDS & {w.lower() for w in stripped})
        if found < config.min_stop_words:
            return "quality.stop_words", f"{found} of Gopher's stop words < {config.min_stop_words}"
    return repetition_failure(text, config.repetition)


def _dup_fractions(items: list[str]) -> tuple[float, float]:
    """(share of items that repeat an earlier one, share of characters in those repeats)."""
    if not items:
        return 0.0, 0.0
    seen: set[str] = set()
    dup_items = dup_chars = 0
    for item in items:
        if item in seen:
            dup_items += 1
            dup_chars += len(item)
        else:
            seen.add(item)
    total = sum(map(len, items)) or 1
    return dup_items / len(items), dup_chars / total


def top_ngram_char_fraction(words: list[str], n: int) -> float:
    """Characters of the most frequent word n-gram (all its occurrences), of all word characters
    (Gopher: counted only when it occurs more than once)."""
    total = sum(map(len, words))
    if len(words) < n or not total:
        return 0.0
    counts = Counter(tuple(words[i:i + n]) for i in range(len(words) - n + 1))
    gram, count = counts.most_common(1)[0]
    return 0.0 if count < 2 else count * sum(map(len, gram)) / total


def dup_ngram_char_fraction(words: list[str], n: int) -> float:
    """Characters of words inside any word n-gram that occurs more than once, of all word
    characters (each word counted once however many repeated n-grams cover it)."""
    total = sum(map(len, words))
    if len(words) < n or not total:
        return 0.0
    first: dict[tuple[str, ...], int] = {}
    covered = [False] * len(words)
    for i in range(len(words) - n + 1):
        gram = tuple(words[i:i + n])
        start = first.setdefault(gram, i)
        if start != i:
            for j in range(i, i + n):
                covered[j] = True
            for j in range(start, start + n):
                covered[j] = True
    return sum(len(w) for w, c in zip(words, covered) if c) / total


def repetition_failure(text: str, config: RepetitionConfig) -> Failure | None:
    """The first of Gopher's repetition rules `text` breaks (Rae et al. 2021, table A1), or None."""
    lines = [line for line in text.split("\n") if line.strip()]
    line_frac, line_chars = _dup_fractions(lines)
    if line_frac > config.dup_line_fraction:
        return "repetition.dup_line_fraction", f"{line_frac:.2f} of lines repeat > {config.dup_line_fraction}"
    paragraphs = [p for p in _PARAGRAPHS.split(text) if p.strip()]
    para_frac, para_chars = _dup_fractions(paragraphs)
    if para_frac > config.dup_paragraph_fraction:
        return "repetition.dup_paragraph_fraction", f"{para_frac:.2f} of paragraphs repeat > {config.dup_paragraph_fraction}"
    if line_chars > config.dup_line_char_fraction:
        return "repetition.dup_line_char_fraction", f"{line_chars:.2f} of characters in repeated lines > {config.dup_line_char_fraction}"
    if para_chars > config.dup_paragraph_char_fraction:
        return ("repetition.dup_paragraph_char_fraction",
                f"{para_chars:.2f} of characters in repeated paragraphs > {config.dup_paragraph_char_fraction}")
    words = text.lower().split()
    for n, limit in sorted(config.top_ngram_char_fraction.items()):
        value = top_ngram_char_fraction(words, n)
        if value > limit:
            return f"repetition.top_{n}gram_char_fraction", f"top {n}-gram covers {value:.2f} of characters > {limit}"
    for n, limit in sorted(config.dup_ngram_char_fraction.items()):
        value = dup_ngram_char_fraction(words, n)
        if value > limit:
            return f"repetition.dup_{n}gram_char_fraction", f"repeated {n}-grams cover {value:.2f} of characters > {limit}"
    return None
