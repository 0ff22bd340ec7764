"""Azure resource names that keep Azure's rules for every `env` and endpoint name the config allows.

azure-native auto-names a resource `<logical name>` plus 8 random characters. That breaks the
strict kinds: a Key Vault name is 3-24 letters, digits and single hyphens, a storage account
3-24 lower-case letters and digits, a managed online endpoint 3-32 characters, letter first, and
all three are unique beyond the resource group (Key Vault and storage worldwide, an endpoint per
region), so a bare `sw-<env>-...` can collide with another tenant's. These get explicit names
instead: a readable head cut to fit, then a stable suffix hashed from the subscription and the
stack's resource group (itself auto-named, so a destroyed and re-created stack gets new names,
which a soft-deleted Key Vault's reserved name requires), unchanged across `pulumi up`s.
Pure functions: `tests/infra/test_azure_names.py` checks them for the longest inputs.
"""

from __future__ import annotations

import hashlib
import re

SUFFIX_LENGTH = 6
"""Hex digits of the stable suffix (16.7 million values per name head)."""


def stable_suffix(*parts: str, length: int = SUFFIX_LENGTH) -> str:
    """A short lower-case hex digest of `parts`: the same for the same parts on every run."""
    return hashlib.sha256("/".join(parts).encode()).hexdigest()[:length]


def _hyphenated(text: str) -> str:
    """Lower-case letters and digits, runs of anything else as one hyphen, none at the ends."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def fit(head: str, suffix: str, max_length: int, *, hyphens: bool = True) -> str:
    """`head` cut so that `head-suffix` (or `headsuffix` without hyphens) has at most `max_length`
    characters; the head keeps its first letters, never ends on a hyphen, never has two in a row."""
    if hyphens:
        cut = _hyphenated(head)[:max_length - len(suffix) - 1].rstrip("-")
        return f"{cut}-{suffix}" if cut else suffix
    return re.sub(r"[^a-z0-9]", "", head.lower())[:max_length - len(suffix)] + suffix


def vault_name(base: str, suffix: str) -> str:
    """Key Vault (`base` is the stack's `sw-<env>`): 3-24 characters, letters, digits and single
    hyphens, letter first (worldwide, as `<name>.vault.azure.net`)."""
    return fit(f"{base}-kv", suffix, 24)


def storage_account_name(base: str, suffix: str) -> str:
    """Storage account: 3-24 lower-case letters and digits (worldwide)."""
    return fit(f"{base}sa", suffix, 24, hyphens=False)


def registry_name(base: str, suffix: str) -> str:
    """Container registry: 5-50 letters and digits (worldwide, as `<name>.azurecr.io`)."""
    return fit(f"{base}acr", suffix, 50, hyphens=False)


def online_endpoint_name(base: str, suffix: str) -> str:
    """Managed online endpoint: 3-32 characters, letter first, letters, digits and hyphens, ending
    in a letter or digit (unique per region: `<name>.<region>.inference.ml.azure.com`)."""
    return fit(base, suffix, 32)
