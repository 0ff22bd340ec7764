"""Bias screens on training data: demographic-term counts per group and a toxic-term rate.

A lexical screen, reported and never used to filter: it says how often a dataset mentions each
group (so a skew is visible beside the evaluation's fairness metrics) and how often it uses
insulting or violent words. It does not judge context ("old" in "old town" counts as an age term);
read it as a prompt to look, not as a verdict.

The term lists are short, documented, and matched as whole lower-cased words:
- gender: the female and male terms of Bolukbasi et al. 2016's definitional pairs (she/he, woman/man, ...);
- religion, ethnicity, age: the group descriptors of the HolisticBias descriptor list (Smith et al. 2022),
  trimmed to single words;
- toxic: a short hand-picked list of common insults and violent words (no slurs are listed in source); a
  rate per 1,000 words. A lexicon is a coarse screen: it misses implicit toxicity and flags quotes.
"""

from __future__ import annotations

import re
from collections import Counter

from pydantic import BaseModel, Field

GROUP_TERMS: dict[str, dict[str, frozenset[str]]] = {
    "gender": {
        "female": frozenset("she her hers herself woman women girl girls mother mothers daughter daughters sister "
                            "sisters wife wives female females lady ladies queen aunt niece grandmother".split()),
        "male": frozenset("he him his himself man men boy boys father fathers son sons brother brothers husband "
                          "husbands male males gentleman gentlemen king uncle nephew grandfather".split()),
    },
    "religion": {
        "christian": frozenset("christian christians christianity catholic catholics protestant church".split()),
        "muslim": frozenset("muslim muslims islam islamic mosque".split()),
        "jewish": frozenset("jewish jew jews judaism synagogue".split()),
        "hindu": frozenset("hindu hindus hinduism temple".split()),
        "buddhist": frozenset("buddhist buddhists buddhism".split()),
        "atheist": frozenset("atheist atheists atheism".split()),
    },
    "ethnicity": {
        "black": frozenset("black african".split()),
        "white": frozenset("white caucasian european".split()),
        "asian": frozenset("asian chinese japanese korean indian vietnamese".split()),
        "hispanic": frozenset("hispanic latino latina latinx mexican".split()),
        "arab": frozenset("arab arabs arabic".split()),
        "indigenous": frozenset("indigenous aboriginal native".split()),
    },
    "age": {
        "young": frozenset("young youth teen teenager teenagers child children kid kids adolescent".split()),
        "old": frozenset("old elderly senior seniors aged pensioner pensioners retiree retirees".split()),
    },
}
TOXIC_TERMS = frozenset("idiot idiots stupid moron morons dumb fool fools loser losers hate hateful disgusting "
                        "pathetic worthless scum trash kill killing murder die shut jerk ugly freak".split())
_WORD = re.compile(r"[a-z]+(?:'[a-z]+)?")


class BiasScreen(BaseModel):
    """Counts over the kept documents: words, term mentions per group, documents mentioning each."""

    words: int = 0
    documents: int = 0
    mentions: dict[str, dict[str, int]] = Field(default_factory=dict, description="axis -> group -> term count.")
    documents_mentioning: dict[str, dict[str, int]] = Field(default_factory=dict)
    toxic_terms: int = 0
    toxic_documents: int = 0

    @property
    def toxic_rate_per_1k_words(self) -> float:
        return round(1000 * self.toxic_terms / self.words, 3) if self.words else 0.0

    def add(self, text: str) -> None:
        """Count one document."""
        words = _WORD.findall(text.lower())
        counts = Counter(words)
        self.words += len(words)
        self.documents += 1
        for axis, groups in GROUP_TERMS.items():
            for group, terms in groups.items():
                n = sum(counts[t] for t in terms)
                if n:
                    self.mentions.setdefault(axis, {}).setdefault(group, 0)
                    self.mentions[axis][group] += n
                    self.documents_mentioning.setdefault(axis, {}).setdefault(group, 0)
                    self.documents_mentioning[axis][group] += 1
        toxic = sum(counts[t] for t in TOXIC_TERMS)
        self.toxic_terms += toxic
        self.toxic_documents += bool(toxic)

    def merge(self, other: "BiasScreen") -> None:
        self.words += other.words
        self.documents += other.documents
        self.toxic_terms += other.toxic_terms
        self.toxic_documents += other.toxic_documents
        for mine, theirs in ((self.mentions, other.mentions), (self.documents_mentioning, other.documents_mentioning)):
            for axis, groups in theirs.items():
                for group, n in groups.items():
                    mine.setdefault(axis, {}).setdefault(group, 0)
                    mine[axis][group] += n

    def summary(self) -> dict:
        """The JSON of the report: counts, each group's share within its axis, the toxic rate."""
        shares = {axis: {g: round(n / sum(groups.values()), 4) for g, n in groups.items()}
                  for axis, groups in self.mentions.items() if sum(groups.values())}
        return {**self.model_dump(), "shares": shares, "toxic_rate_per_1k_words": self.toxic_rate_per_1k_words}
