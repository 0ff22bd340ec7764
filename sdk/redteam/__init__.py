"""Red teaming with garak (https://github.com/NVIDIA/garak) against an OpenAI-compatible endpoint.

`run_redteam(endpoint_url, model, probes, ...)` runs garak from its own virtual environment
(scripts/install_garak.sh) as a subprocess, offline, and returns a `RedTeamReport`: the probe
families and probes that ran, the attack success rate per probe and detector and overall
(`redteam.attack_success_rate`, lower is better, gateable), and every probe or detector that could
not run offline, named with the reason. See docs/safety.md.

Importing this package loads neither garak nor any ML library.
"""

from __future__ import annotations

from .report import NotRun, ProbeResult, RedTeamReport
from .runner import run_redteam

__all__ = ["NotRun", "ProbeResult", "RedTeamReport", "run_redteam"]
