"""The provider SDKs, loaded one resource module at a time.

A Pulumi provider package (`pulumi_gcp`, `pulumi_aws`, `pulumi_azure_native`) loads each cloud
service lazily, but as a whole: the first `gcp.compute.Network` runs `pulumi_gcp/compute/__init__.py`,
which imports every resource module of Compute Engine (about 1.8 s for a VPC and a subnet).
Each generated resource lives in its own module (`compute/network.py`) that needs only the
service's shared `_inputs`, `outputs` and `_enums`. `provider("pulumi_gcp")` returns a stand-in
for the package: `gcp.compute.Network` imports `pulumi_gcp.compute.network` (and what it imports)
without the service's `__init__`, and hands back the very class the full package would, so
programs, mocks and policies see the same types either way.

The module of a name follows the generator's layout: class `FooBar` in `foo_bar.py`, its
`FooBarArgs` there too, nested input types (`AmlComputeArgs`) in `_inputs.py`, enums in
`_enums.py`, `get_foo` and `get_foo_output` in `get_foo.py`. A name not found that way is
taken from the fully loaded service, so the narrow path is only ever a shortcut, never a
different answer. Set `STACKWISE_NARROW_IMPORTS=0` to load every service whole (what
`bench/plan.py` compares against).
"""

from __future__ import annotations

import importlib
import importlib.machinery
import os
import re
import sys
import threading
import types
from typing import Any

_WORD = re.compile(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])")
_LOCK = threading.Lock()


def narrow_imports() -> bool:
    """False when `STACKWISE_NARROW_IMPORTS=0`: every service is then loaded whole."""
    return os.environ.get("STACKWISE_NARROW_IMPORTS", "1").strip().lower() not in ("0", "false", "no", "off")


def provider(package: str) -> Any:
    """The provider package `package` (e.g. "pulumi_gcp"), loading only the resource modules used."""
    if not narrow_imports():
        return importlib.import_module(package)
    return _Package(package)


def modules_for(name: str) -> list[str]:
    """The modules of a generated provider service that may define `name`, most likely first."""
    if name.startswith("get_"):
        return [name.removesuffix("_output")]
    if not name[:1].isupper():
        return []
    for suffix in ("ArgsDict", "Args"):
        if name.endswith(suffix):
            return [_snake(name.removesuffix(suffix)), "_inputs"]
    return [_snake(name), "_enums"]


def _snake(name: str) -> str:
    return _WORD.sub("_", name).lower()


class _Package:
    """Stands in for a provider package: attribute access yields its services, narrowly loaded."""

    def __init__(self, package: str):
        self._package = package
        self._services: dict[str, _Service] = {}

    def __getattr__(self, service: str) -> "_Service":
        if service.startswith("_"):
            raise AttributeError(service)
        if service not in self._services:
            self._services[service] = _Service(f"{self._package}.{service}")
        return self._services[service]

    def __repr__(self) -> str:
        return f"<narrowly loaded provider {self._package}>"


class _Service:
    """Stands in for one service (`pulumi_gcp.compute`): each name is imported from its own module."""

    def __init__(self, service: str):
        self._service = service
        self._names: dict[str, Any] = {}

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        if name not in self._names:
            self._names[name] = _find(self._service, name)
        return self._names[name]

    def __repr__(self) -> str:
        return f"<narrowly loaded service {self._service}>"


def _find(service: str, name: str) -> Any:
    package = importlib.import_module(service.rpartition(".")[0])  # light: services are lazy stubs
    loaded = sys.modules.get(service)
    if loaded is None or type(loaded) is not types.ModuleType:  # not (yet) loaded whole
        folder = _folder(package, service)
        for module in modules_for(name):
            if folder is not None and importlib.machinery.PathFinder.find_spec(f"{service}.{module}", [folder]):
                loaded_alone = _import_alone(service, module, folder)
                # Only a name the module exports itself: resource modules also star-import `_inputs`.
                if name in getattr(loaded_alone, "__all__", ()):
                    return getattr(loaded_alone, name)
    return getattr(importlib.import_module(service), name)  # the service whole: always right


def _folder(package: types.ModuleType, service: str) -> str | None:
    spec = importlib.machinery.PathFinder.find_spec(service, list(package.__path__))
    locations = spec.submodule_search_locations if spec is not None else None
    return list(locations)[0] if locations else None


def _import_alone(service: str, module: str, folder: str) -> types.ModuleType:
    """Import `service.module` with a bare package object standing in for the service's `__init__`.

    The service's own entry in sys.modules (usually Pulumi's lazy stub) is put back afterwards,
    so a later full load of the service reuses the modules imported here, not copies of them.
    """
    full = f"{service}.{module}"
    with _LOCK:
        if full in sys.modules:
            return sys.modules[full]
        original = sys.modules.get(service)
        if original is not None and type(original) is types.ModuleType:
            return importlib.import_module(full)  # the service got loaded whole meanwhile
        bare = types.ModuleType(service)
        bare.__path__ = [folder]
        bare.__package__ = service
        bare.__spec__ = importlib.machinery.ModuleSpec(service, None, is_package=True)
        bare.__spec__.submodule_search_locations = [folder]
        sys.modules[service] = bare
        try:
            return importlib.import_module(full)
        finally:
            if original is None:
                sys.modules.pop(service, None)
            else:
                sys.modules[service] = original
