"""Curation at ingestion: dedup, quality, language, PII and bias screens, in one typed step.

Used by `stackwise curate`, by the index job (`IndexSpec.curation`) and by fine-tune data
preparation (`FineTuneSpec.curation`). See docs/curation.md. Light to import: datasketch,
py3langid and presidio are imported when a step first needs them.
"""

from .config import CurationConfig, load_config, parse_config
from .report import CurationReport, render_html
from .run import Curator, CurationResult, Exclusion, Item, curate

__all__ = ["CurationConfig", "CurationReport", "CurationResult", "Curator", "Exclusion", "Item", "curate",
           "load_config", "parse_config", "render_html"]
