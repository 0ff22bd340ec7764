"""PII detection and redaction with presidio-analyzer's pattern recognizers, without an NLP model.

Each recognizer is instantiated directly and called with `nlp_artifacts=None`: regular expressions
plus the recognizer's own validation (Luhn for credit cards, the ISO 13616 mod-97 checksum for
IBANs, the phonenumbers library for phone numbers, ipaddress for IPs, the invalid-range rules for
US SSNs). No spaCy model is loaded or downloaded. Overlapping matches are resolved by score, then
length (an IP address is not also a phone number).

Values found are never logged, printed or reported: a `Finding` holds the entity type, offsets and
score only, and callers report counts.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any

#: The placeholder that replaces each entity type in redact mode.
PLACEHOLDERS = {"EMAIL_ADDRESS": "<EMAIL>", "PHONE_NUMBER": "<PHONE>", "CREDIT_CARD": "<CREDIT_CARD>",
                "IBAN_CODE": "<IBAN>", "IP_ADDRESS": "<IP_ADDRESS>", "US_SSN": "<US_SSN>"}

_RECOGNIZERS = {
    "EMAIL_ADDRESS": "EmailRecognizer", "PHONE_NUMBER": "PhoneRecognizer", "CREDIT_CARD": "CreditCardRecognizer",
    "IBAN_CODE": "IbanRecognizer", "IP_ADDRESS": "IpRecognizer", "US_SSN": "UsSsnRecognizer",
    "UK_NINO": "UkNinoRecognizer", "US_ITIN": "UsItinRecognizer", "US_PASSPORT": "UsPassportRecognizer",
    "ES_NIF": "EsNifRecognizer", "IT_FISCAL_CODE": "ItFiscalCodeRecognizer", "PL_PESEL": "PlPeselRecognizer",
    "FI_PERSONAL_IDENTITY_CODE": "FiPersonalIdentityCodeRecognizer",
}


@dataclass(frozen=True)
class Finding:
    """One PII match: its type and where it is, never its value."""

    entity: str
    start: int
    end: int
    score: float


def placeholder(entity: str) -> str:
    return PLACEHOLDERS.get(entity, f"<{entity}>")


@lru_cache(maxsize=1)
def _offline_tld_extract() -> Any:
    import tldextract

    # The public suffix list snapshot bundled with tldextract: no network fetch, no cache writes.
    return tldextract.TLDExtract(suffix_list_urls=(), cache_dir=None)


def _recognizer(entity: str) -> Any:
    from presidio_analyzer import predefined_recognizers as recognizers

    cls = getattr(recognizers, _RECOGNIZERS[entity])
    if entity == "EMAIL_ADDRESS":
        class OfflineEmailRecognizer(cls):  # type: ignore[misc, valid-type]
            """presidio's email recognizer, validating the domain against the bundled suffix list
            (the stock one tries to download the list on first use)."""

            def validate_result(self, pattern_text: str) -> bool:
                return _offline_tld_extract()(pattern_text).fqdn != ""

        return OfflineEmailRecognizer()
    return cls()


class PiiScanner:
    """Finds the configured entity types in a text with presidio's pattern recognizers."""

    def __init__(self, entities: list[str], min_score: float):
        from ..registry import require

        require("presidio_analyzer", "curate", "PII detection")
        self.entities = list(entities)
        self.min_score = min_score
        self._recognizers = [(entity, _recognizer(entity)) for entity in self.entities]

    def scan(self, text: str) -> list[Finding]:
        """Non-overlapping findings in `text`, sorted by offset."""
        found: list[Finding] = []
        for entity, recognizer in self._recognizers:
            for result in recognizer.analyze(text, [entity], nlp_artifacts=None) or []:
                if result.entity_type == entity and result.score >= self.min_score and result.end > result.start:
                    found.append(Finding(entity, result.start, result.end, float(result.score)))
        chosen: list[Finding] = []
        for finding in sorted(found, key=lambda f: (-f.score, -(f.end - f.start), f.start)):
            if all(finding.end <= c.start or finding.start >= c.end for c in chosen):
                chosen.append(finding)
        return sorted(chosen, key=lambda f: f.start)


def redact(text: str, findings: list[Finding]) -> str:
    """`text` with each finding replaced by its placeholder (`<EMAIL>`, `<CREDIT_CARD>`, ...)."""
    out, last = [], 0
    for finding in sorted(findings, key=lambda f: f.start):
        out += [text[last:finding.start], placeholder(finding.entity)]
        last = finding.end
    out.append(text[last:])
    return "".join(out)
