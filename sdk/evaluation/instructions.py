"""Instruction following by verifiable checks (in the spirit of IFEval): each record's `checks`
names constraints a response must satisfy, and each is checked by code, not by a judge model.

Checks: `json` (the response parses as JSON), `format` ("json", "bullets", "numbered",
"lowercase", "uppercase", "one_line"), `min_words`, `max_words`, `max_chars`, `keywords` (all
must appear, case-insensitive), `forbidden` (none may appear), `starts_with`, `ends_with`.
"""

from __future__ import annotations

import json
import re
from typing import Any

from ..errors import InputError

CHECKS = ("json", "format", "min_words", "max_words", "max_chars", "keywords", "forbidden", "starts_with", "ends_with")
FORMATS = ("json", "bullets", "numbered", "lowercase", "uppercase", "one_line")


def _is_json(text: str) -> bool:
    body = text.strip()
    fenced = re.fullmatch(r"```(?:json)?\s*(.*?)\s*```", body, re.DOTALL)
    try:
        json.loads(fenced.group(1) if fenced else body)
        return True
    except ValueError:
        return False


def _format(text: str, fmt: str) -> bool:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    if fmt == "json":
        return _is_json(text)
    if fmt == "bullets":
        return bool(lines) and all(re.match(r"^[-*\u2022]\s+\S", line) for line in lines)
    if fmt == "numbered":
        return bool(lines) and all(re.match(r"^\d+[.)]\s+\S", line) for line in lines)
    if fmt == "lowercase":
        return text == text.lower() and any(c.isalpha() for c in text)
    if fmt == "uppercase":
        return text == text.upper() and any(c.isalpha() for c in text)
    if fmt == "one_line":
        return len(lines) == 1
    raise ValueError(fmt)


def check(response: str, checks: dict[str, Any]) -> dict[str, bool]:
    """Each named check -> passed."""
    words = len(response.split())
    lower = response.lower()
    out: dict[str, bool] = {}
    for name, want in checks.items():
        if name == "json":
            out[name] = _is_json(response) == bool(want)
        elif name == "format":
            out[name] = _format(response, str(want))
        elif name == "min_words":
            out[name] = words >= int(want)
        elif name == "max_words":
            out[name] = words <= int(want)
        elif name == "max_chars":
            out[name] = len(response) <= int(want)
        elif name == "keywords":
            out[name] = all(str(k).lower() in lower for k in want)
        elif name == "forbidden":
            out[name] = not any(str(k).lower() in lower for k in want)
        elif name == "starts_with":
            out[name] = response.strip().startswith(str(want))
        elif name == "ends_with":
            out[name] = response.strip().endswith(str(want))
    return out


def validate_checks(checks: Any, where: str) -> dict[str, Any]:
    if not isinstance(checks, dict) or not checks:
        raise InputError("`checks` must be a non-empty object", where=where,
                         fix='e.g. "checks": {"format": "json", "max_words": 50}')
    unknown = sorted(set(checks) - set(CHECKS))
    if unknown:
        raise InputError(f"unknown check {unknown[0]!r}", where=where, fix="use: " + ", ".join(CHECKS))
    if "format" in checks and checks["format"] not in FORMATS:
        raise InputError(f"unknown format {checks['format']!r}", where=where, fix="use: " + ", ".join(FORMATS))
    return checks
