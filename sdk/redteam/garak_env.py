"""garak's own environment, its plugin catalogue, and which probes and detectors can run offline.

garak pins openai 2.x and protobuf 7, so it lives in its own virtual environment (made by
scripts/install_garak.sh) and runs as a subprocess; nothing here imports garak. The catalogue
(every probe and detector with the parameters garak records for it) comes from garak's plugin
cache through a small script run with the venv's Python.

A plugin cannot run offline when its parameters name something to fetch: a Hugging Face model
(`detector_model_path`) or dataset (`dataset_name`, `attack_hf_dataset`) not in the local Hugging
Face cache, a judge or attack model behind an API (`detector_model_name`, `red_team_model_name`,
`attack_model_name`), the Perspective API, or a Python package the venv lacks.
"""

from __future__ import annotations

import difflib
import json
import os
import subprocess
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from ..errors import InputError, MissingDependencyError

INSTALL_FIX = "run scripts/install_garak.sh (it creates the venv; $STACKWISE_GARAK_VENV overrides where)"
# Environment of every garak subprocess: no Hugging Face downloads, no telemetry.
OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
               "HF_HUB_DISABLE_TELEMETRY": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1"}

_CATALOG_SCRIPT = r"""
import importlib.util, json, os, sys
import garak
from garak import _plugins
try:
    from huggingface_hub.constants import HF_HUB_CACHE
except Exception:
    HF_HUB_CACHE = os.path.expanduser("~/.cache/huggingface/hub")
KEYS = ("active", "primary_detector", "extended_detectors", "recommended_detector", "DEFAULT_PARAMS",
        "extra_dependency_names", "description")
def cached(repo, kind):
    folder = os.path.join(HF_HUB_CACHE, kind + "s--" + repo.replace("/", "--"), "snapshots")
    return os.path.isdir(folder) and any(os.scandir(folder))
out = {"garak_version": garak.__version__, "plugins": {}, "cached": {}, "missing_packages": []}
for category in ("probes", "detectors"):
    # detectors: base classes too (some probes name base.TriggerListDetector as theirs)
    for name, active in _plugins.enumerate_plugins(category, skip_base_classes=category == "probes"):
        try:
            info = _plugins.plugin_info(name)
        except Exception:
            continue
        entry = {k: info.get(k) for k in KEYS}
        entry["active"] = bool(active)
        out["plugins"][name] = entry
        params = info.get("DEFAULT_PARAMS") or {}
        for key, kind in (("detector_model_path", "model"), ("dataset_name", "dataset"),
                          ("attack_hf_dataset", "dataset")):
            if isinstance(params.get(key), str):
                out["cached"][params[key]] = cached(params[key], kind)
        for dep in info.get("extra_dependency_names") or []:
            if importlib.util.find_spec(dep.split(".")[0]) is None:
                out["missing_packages"].append(dep)
print(json.dumps(out, default=str))
"""


def venv_dir() -> Path:
    """Where garak's venv lives: $STACKWISE_GARAK_VENV, else ~/.cache/stackwise/garak."""
    return Path(os.environ.get("STACKWISE_GARAK_VENV") or Path.home() / ".cache" / "stackwise" / "garak").expanduser()


def garak_python() -> Path:
    """The venv's Python, after checking garak is installed there (else `MissingDependencyError`)."""
    python = venv_dir() / "bin" / "python"
    if not (venv_dir() / "bin" / "garak").is_file() or not python.is_file():
        raise MissingDependencyError(f"garak is not installed in {venv_dir()}", where="$STACKWISE_GARAK_VENV",
                                     fix=INSTALL_FIX)
    return python


def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """os.environ for a garak subprocess, offline, without the main venv's Python path."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    env.update(OFFLINE_ENV)
    env["PATH"] = f"{venv_dir() / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    env.update(extra or {})
    return env


class Plugin(BaseModel):
    active: bool = True
    primary_detector: str | None = None
    extended_detectors: list[str] = Field(default_factory=list)
    recommended_detector: list[str] = Field(default_factory=list)
    DEFAULT_PARAMS: dict[str, Any] = Field(default_factory=dict)
    extra_dependency_names: list[str] = Field(default_factory=list)
    description: str | None = None


class Catalog(BaseModel):
    """garak's probes and detectors (names without the `probes.`/`detectors.` prefix)."""

    garak_version: str
    probes: dict[str, Plugin]
    detectors: dict[str, Plugin]
    cached: dict[str, bool] = Field(default_factory=dict)  # HF repo id -> in the local cache
    missing_packages: list[str] = Field(default_factory=list)

    def families(self) -> list[str]:
        return sorted({name.split(".")[0] for name in self.probes})

    def detectors_of(self, probe: str) -> tuple[list[str], list[str]]:
        """(detectors garak runs for the probe with extended detectors off, its extended detectors)."""
        p = self.probes[probe]
        if p.primary_detector:
            return [p.primary_detector], sorted(p.extended_detectors)
        return sorted(p.recommended_detector or []), []


def load_catalog(timeout_s: float = 120) -> Catalog:
    """Ask the garak venv for its plugin catalogue (about a second once garak's cache exists)."""
    python = garak_python()
    proc = subprocess.run([str(python), "-c", _CATALOG_SCRIPT], env=child_env(), capture_output=True, text=True,
                          timeout=timeout_s, stdin=subprocess.DEVNULL, check=False)
    if proc.returncode != 0:
        raise MissingDependencyError(f"garak in {venv_dir()} does not start: {proc.stderr.strip()[-400:]}",
                                     where=str(python), fix=INSTALL_FIX)
    raw = json.loads(proc.stdout.strip().splitlines()[-1])
    plugins = {name: Plugin.model_validate({k: v for k, v in info.items() if v is not None})
               for name, info in raw["plugins"].items()}
    return Catalog(garak_version=raw["garak_version"],
                   probes={n.removeprefix("probes."): p for n, p in plugins.items() if n.startswith("probes.")},
                   detectors={n.removeprefix("detectors."): p for n, p in plugins.items()
                              if n.startswith("detectors.")},
                   cached=raw["cached"], missing_packages=raw["missing_packages"])


def resolve_probes(requested: list[str], catalog: Catalog) -> list[str]:
    """Probe class names for `requested`: a family (`dan`: its active probes, as garak selects
    them) or one probe (`dan.DanInTheWild`, active or not). Unknown names raise `InputError`
    with the closest names garak knows (`python -m garak --list_probes` lists them all)."""
    chosen: list[str] = []
    for raw in requested:
        name = raw.strip().removeprefix("probes.")
        if not name:
            continue
        if name in catalog.probes:
            chosen.append(name)
            continue
        members = [p for p in catalog.probes if p.split(".")[0] == name]
        active = [p for p in members if catalog.probes[p].active]
        if active:
            chosen += sorted(active)
            continue
        if members:
            raise InputError(f"garak probe family {name!r} has no probe active by default", where="--probes",
                             fix="name its probes one by one, e.g. " + ", ".join(sorted(members)[:4]))
        close = difflib.get_close_matches(name, [*catalog.families(), *catalog.probes], n=3, cutoff=0.6)
        raise InputError(f"unknown garak probe {name!r}", where="--probes",
                         fix=(f"did you mean {', '.join(close)}? " if close else "")
                         + "list them with: python -m garak --list_probes (in the garak venv); families: "
                         + ", ".join(catalog.families()[:40]))
    if not chosen:
        raise InputError("no garak probe given", where="--probes", fix="e.g. --probes dan.DanInTheWild,encoding")
    return list(dict.fromkeys(chosen))


def offline_blocker(plugin: Plugin, module: str, catalog: Catalog) -> str | None:
    """Why the plugin cannot run offline here, or None when it can."""
    params = plugin.DEFAULT_PARAMS
    for key, kind in (("detector_model_path", "model"), ("dataset_name", "dataset"), ("attack_hf_dataset", "dataset")):
        repo = params.get(key)
        if isinstance(repo, str) and not catalog.cached.get(repo, False):
            return f"needs the Hugging Face {kind} {repo} (not in the local cache; runs are offline)"
    for key, role in (("detector_model_name", "judge"), ("red_team_model_name", "attack"),
                      ("attack_model_name", "attack"), ("evaluator_model_name", "judge")):
        if params.get(key):
            kind = params.get(key.replace("_name", "_type"))
            return f"needs a {role} model ({kind} {params[key]}) reached over an API or downloaded"
    if module == "perspective":
        return "needs Google's Perspective API (PERSPECTIVE_API_KEY, network)"
    missing = [d for d in plugin.extra_dependency_names if d in catalog.missing_packages]
    if missing:
        return f"needs the Python package {missing[0]}, not installed in the garak venv"
    return None
