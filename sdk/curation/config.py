"""`CurationConfig`: every threshold of the curation step, typed and bounded.

One model, loaded from a YAML file (`stackwise curate --config curate.yaml`, `--curate FILE` on
index / finetune) or given as the `curation` field of an index or fine-tune spec. Unknown keys and
values out of range are refused (`SpecError`, exit 2) naming the key and the allowed range.
The defaults are the published ones: Gopher (Rae et al. 2021, "Scaling Language Models: Methods,
Analysis & Insights from Training Gopher", appendix A.1.1) for the quality and repetition rules,
C4 (Raffel et al. 2020, "Exploring the Limits of Transfer Learning with a Unified Text-to-Text
Transformer", section 2.2) for the boilerplate rules.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

Fraction = Annotated[float, Field(ge=0.0, le=1.0)]


class _Config(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DedupConfig(_Config):
    """Exact (normalized-text SHA-256) and near-duplicate (MinHash LSH over word n-gram shingles) removal."""

    exact: bool = Field(True, description="Drop a document whose normalized text equals an earlier one's.")
    near: bool = Field(True, description="Drop a document whose estimated Jaccard similarity to a kept one "
                       "(this run or, with state, an earlier run) is at least `threshold`.")
    threshold: Annotated[float, Field(ge=0.5, le=1.0)] = 0.8
    num_perm: Annotated[int, Field(ge=16, le=512, description="MinHash permutations.")] = 128
    shingle: Annotated[int, Field(ge=1, le=10, description="Words per shingle (word n-grams).")] = 5
    seed: Annotated[int, Field(ge=0, le=2**31 - 1)] = 1


class RepetitionConfig(_Config):
    """Gopher's repetition rules (Rae et al. 2021, table A1): fractions above these drop the document."""

    dup_line_fraction: Fraction = Field(0.30, description="Lines that repeat another line, of all lines.")
    dup_paragraph_fraction: Fraction = Field(0.30, description="Paragraphs that repeat another, of all paragraphs.")
    dup_line_char_fraction: Fraction = Field(0.20, description="Characters in repeated lines, of all characters.")
    dup_paragraph_char_fraction: Fraction = Field(0.20, description="Characters in repeated paragraphs.")
    top_ngram_char_fraction: dict[int, Fraction] = Field(
        default_factory=lambda: {2: 0.20, 3: 0.18, 4: 0.16},
        description="n -> the most frequent word n-gram's characters, of all word characters (n in 2..4).")
    dup_ngram_char_fraction: dict[int, Fraction] = Field(
        default_factory=lambda: {5: 0.15, 6: 0.14, 7: 0.13, 8: 0.12, 9: 0.11, 10: 0.10},
        description="n -> characters of words inside repeated n-grams, of all word characters (n in 5..10).")

    @field_validator("top_ngram_char_fraction", "dup_ngram_char_fraction")
    @classmethod
    def _ns_in_range(cls, value: dict[int, float], info: Any) -> dict[int, float]:
        low, high = (2, 4) if info.field_name == "top_ngram_char_fraction" else (5, 10)
        bad = [n for n in value if not low <= n <= high]
        if bad:
            raise ValueError(f"n={bad[0]}: n must be between {low} and {high}")
        return value


class QualityConfig(_Config):
    """Gopher's quality filters and C4's boilerplate rules; each failing rule is a drop reason."""

    enabled: bool = True
    min_words: Annotated[int, Field(ge=0, le=1_000_000)] = 50
    max_words: Annotated[int, Field(ge=1, le=100_000_000)] = 100_000
    min_mean_word_length: Annotated[float, Field(ge=0, le=100)] = 3.0
    max_mean_word_length: Annotated[float, Field(ge=1, le=100)] = 10.0
    max_symbol_word_ratio: Fraction = Field(0.1, description="('#' + '...' + '…') per word.")
    max_bullet_lines_fraction: Fraction = Field(0.9, description="Lines starting with a bullet, of all lines.")
    max_ellipsis_lines_fraction: Fraction = Field(0.3, description="Lines ending with an ellipsis, of all lines.")
    min_alpha_words_fraction: Fraction = Field(0.8, description="Words with at least one letter, of all words "
                                               "(Gopher's non-alpha rule).")
    min_stop_words: Annotated[int, Field(ge=0, le=8, description="Of Gopher's 8 English stop words (the, be, to, of, "
                                         "and, that, have, with), how many must appear; 0 turns it off.")] = 2
    repetition: RepetitionConfig = RepetitionConfig()
    c4_boilerplate_lines: bool = Field(True, description="Remove lines naming javascript, cookie or privacy "
                                       "policies, terms of use (C4).")
    c4_lorem_ipsum: bool = Field(True, description="Drop a document containing 'lorem ipsum' (C4).")
    c4_curly_brace: bool = Field(False, description="Drop a document containing '{' (C4; off: it drops code).")

    @model_validator(mode="after")
    def _bounds_ordered(self) -> "QualityConfig":
        if self.min_words > self.max_words:
            raise ValueError(f"min_words ({self.min_words}) is above max_words ({self.max_words})")
        if self.min_mean_word_length > self.max_mean_word_length:
            raise ValueError(f"min_mean_word_length ({self.min_mean_word_length}) is above max_mean_word_length "
                             f"({self.max_mean_word_length})")
        return self


class LanguageConfig(_Config):
    """Language identification with py3langid (its model ships inside the package)."""

    enabled: bool = True
    mode: Literal["filter", "tag"] = Field("filter", description="filter: keep only `languages`; tag: keep "
                                          "every document and set its metadata `language`.")
    languages: list[str] = Field(default_factory=lambda: ["en"], description="ISO 639-1 codes kept by filter.")
    min_confidence: Fraction = Field(0.5, description="Below this (normalized probability) a document's language "
                                     "is 'unknown': kept by filter, tagged 'unknown'.")
    paragraphs: bool = Field(False, description="Also judge each paragraph (blank-line separated) of a kept "
                             "document: filter removes paragraphs in other languages, tag lists them.")
    min_paragraph_chars: Annotated[int, Field(ge=1, le=100_000)] = 80

    @field_validator("languages")
    @classmethod
    def _codes(cls, value: list[str]) -> list[str]:
        bad = [code for code in value if not (len(code) in (2, 3) and code.isalpha() and code.islower())]
        if bad:
            raise ValueError(f"language {bad[0]!r} is not a lowercase ISO 639-1 code such as en, it, bg")
        return value

    @model_validator(mode="after")
    def _some_language(self) -> "LanguageConfig":
        if self.mode == "filter" and not self.languages:
            raise ValueError("languages is empty: filter mode needs at least one language to keep")
        return self


PII_ENTITIES = ("EMAIL_ADDRESS", "PHONE_NUMBER", "CREDIT_CARD", "IBAN_CODE", "IP_ADDRESS", "US_SSN", "UK_NINO",
                "US_ITIN", "US_PASSPORT", "ES_NIF", "IT_FISCAL_CODE", "PL_PESEL", "FI_PERSONAL_IDENTITY_CODE")


class PiiConfig(_Config):
    """PII detection with presidio-analyzer's pattern recognizers (no NLP model)."""

    enabled: bool = True
    mode: Literal["report", "redact", "drop"] = Field("redact", description="report: count only; redact: replace "
                                                     "each value with <TYPE>; drop: exclude the document.")
    entities: list[str] = Field(default_factory=lambda: list(PII_ENTITIES[:6]),
                                description=f"Entity types to find, of: {', '.join(PII_ENTITIES)}.")
    min_score: Fraction = Field(0.4, description="presidio's pattern score below which a match is ignored.")

    @field_validator("entities")
    @classmethod
    def _known_entities(cls, value: list[str]) -> list[str]:
        bad = [e for e in value if e not in PII_ENTITIES]
        if bad:
            raise ValueError(f"unknown PII entity {bad[0]!r}: choose from {', '.join(PII_ENTITIES)}")
        return value


class BiasConfig(_Config):
    """Demographic-term counts and a toxic-term rate: reported, never filtered."""

    enabled: bool = True


class CurationConfig(_Config):
    """The whole curation step. Each part can be switched off with `enabled: false` (dedup: exact/near)."""

    dedup: DedupConfig = DedupConfig()
    quality: QualityConfig = QualityConfig()
    language: LanguageConfig = LanguageConfig()
    pii: PiiConfig = PiiConfig()
    bias: BiasConfig = BiasConfig()
    max_clusters_reported: Annotated[int, Field(ge=0, le=100_000)] = 100


def _range_of(loc: tuple[Any, ...]) -> str:
    """' (allowed: LOW to HIGH)' for the numeric field at `loc`, from its declared bounds; '' otherwise."""
    model: Any = CurationConfig
    info = None
    for part in loc:
        fields = getattr(model, "model_fields", None)
        if not fields or part not in fields:
            break
        info = fields[part]
        model = info.annotation
    else:
        low = high = None
        for meta in getattr(info, "metadata", []):
            low = getattr(meta, "ge", getattr(meta, "gt", low))
            high = getattr(meta, "le", getattr(meta, "lt", high))
        if low is not None or high is not None:
            return f" (allowed: {low if low is not None else '-inf'} to {high if high is not None else 'inf'})"
    return ""


def parse_config(raw: Any, where: str) -> CurationConfig:
    """A `CurationConfig` from a mapping; `SpecError` naming the key, its allowed range and `where` otherwise."""
    from pydantic import ValidationError

    from ..errors import SpecError

    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise SpecError(f"a curation config must be a mapping of sections, got {type(raw).__name__}", where=where,
                        fix="write sections such as `dedup:`, `quality:`, `language:`, `pii:` (docs/curation.md)")
    if set(raw) == {"curation"} and isinstance(raw["curation"], dict):
        raw = raw["curation"]  # a file may wrap it in a top-level `curation:`
    try:
        return CurationConfig.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        key = ".".join(str(p) for p in first["loc"]) or "(config)"
        message = first["msg"].removeprefix("Value error, ")
        if first["type"] == "extra_forbidden":
            message = "unknown key"
        raise SpecError(f"curation {key}: {message}{_range_of(tuple(first['loc']))}", where=f"{where}: {key}",
                        fix="correct or remove that key (the keys, defaults and ranges: docs/curation.md)") from None


def load_config(path: str) -> CurationConfig:
    """Read a curation YAML (or JSON) file with the project's bounded loader; errors name the file and key."""
    from ..errors import SpecError
    from ..userinput import load_yaml, read_text

    text = read_text(path, error=SpecError, what="curation config", fix="check the path given to --config")
    return parse_config(load_yaml(text, str(path), SpecError, what="curation config"), str(path))
