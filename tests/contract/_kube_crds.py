"""Judge a Kubernetes manifest as the API server would, for the deploy adapter's tests (the lead merges
this with tests/kube_validate.py, which the infra tests use: same rules, same `validate_manifest`).

- Core groups (v1, apps/v1, ...): kubernetes-validate's strict schemas of the pinned Kubernetes
  version (`stackwise.adapters.kube.KUBERNETES_VERSION`): an unknown field is an error, as with
  `kubectl apply --validate=strict`.
- Custom resources: jsonschema (Draft 7) against the `openAPIV3Schema` of the upstream CRD vendored
  under tests/golden/crds/ (its README names repository, tag, commit and path), with every object that
  lists `properties` closed (`additionalProperties: false`) unless it preserves unknown fields: the
  API server prunes unknown fields of a structural schema, and strict validation refuses them. The
  CRDs' CEL rules (`x-kubernetes-validations`) are not evaluated.
- `status` is not judged: a write to the main resource ignores it (status subresource).
- A custom kind with no vendored CRD is an error, never a silent pass.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path
from typing import Any

from stackwise.adapters.kube import KUBERNETES_VERSION

CRDS = Path(__file__).resolve().parents[1] / "golden" / "crds"


class ManifestError(AssertionError):
    """A manifest the API server would refuse: its kind, name and what is wrong."""


@functools.cache
def crd_schemas() -> dict[tuple[str, str], dict[str, Any]]:
    """(apiVersion, kind) -> openAPIV3Schema of every served version of every vendored CRD."""
    import yaml

    schemas: dict[tuple[str, str], dict[str, Any]] = {}
    for path in sorted(CRDS.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")):
            if not doc or doc.get("kind") != "CustomResourceDefinition":
                continue
            spec = doc["spec"]
            for version in spec["versions"]:
                if version.get("served", True):
                    schemas[(f"{spec['group']}/{version['name']}", spec["names"]["kind"])] = \
                        version["schema"]["openAPIV3Schema"]
    return schemas


@functools.cache
def _validator(api_version: str, kind: str) -> Any:
    import jsonschema

    return jsonschema.Draft7Validator(_closed(crd_schemas()[(api_version, kind)]))


def _core(api_version: str) -> bool:
    group = api_version.rpartition("/")[0]
    return "." not in group or group.endswith(".k8s.io") and not group.startswith("gateway.networking")


def validate_manifest(obj: dict[str, Any]) -> None:
    """Raise ManifestError unless `obj` is a valid object of its apiVersion and kind."""
    if not isinstance(obj, dict) or not obj.get("apiVersion") or not obj.get("kind"):
        raise ManifestError(f"not a Kubernetes object (apiVersion and kind): {obj!r:.200}")
    obj = {k: v for k, v in obj.items() if k != "status"}
    api_version, kind = obj["apiVersion"], obj["kind"]
    where = f"{kind} {(obj.get('metadata') or {}).get('name')!r} ({api_version})"
    _check_metadata(obj.get("metadata") or {}, where)
    if (api_version, kind) in crd_schemas():
        errors = sorted(_validator(api_version, kind).iter_errors(obj), key=lambda e: list(e.absolute_path))
        if errors:
            path = ".".join(str(p) for p in errors[0].absolute_path) or "(root)"
            raise ManifestError(f"{where}: {path}: {errors[0].message}")
        return
    if not _core(api_version):
        raise ManifestError(f"{where}: no vendored CRD for this custom resource under {CRDS}")
    import kubernetes_validate

    try:
        kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.ValidationError as exc:
        path = ".".join(str(p) for p in exc.path) or "(root)"
        raise ManifestError(f"{where}: {path}: {exc.message}") from None
    except kubernetes_validate.SchemaNotFoundError as exc:
        raise ManifestError(f"{where}: {exc}") from None


_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_DNS1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
_LABEL_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]{0,61})?[A-Za-z0-9]$")
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]{0,61})?[A-Za-z0-9])?$")


def _check_metadata(meta: dict[str, Any], where: str) -> None:
    """What the API server checks of metadata and the schemas do not: the name (a DNS subdomain; a
    Service's a DNS-1035 label of at most 63 characters), label keys and values."""
    name = meta.get("name")
    if not (isinstance(name, str) and len(name) <= 253 and _SUBDOMAIN.fullmatch(name)):
        raise ManifestError(f"{where}: metadata.name {name!r} is not a DNS subdomain name")
    if where.startswith("Service ") and not (len(name) <= 63 and _DNS1035.fullmatch(name)):
        raise ManifestError(f"{where}: metadata.name {name!r} is not a DNS-1035 label (a Service's name must be)")
    for key, value in (meta.get("labels") or {}).items():
        prefix, _, short = str(key).rpartition("/")
        if (prefix and not (len(prefix) <= 253 and _SUBDOMAIN.fullmatch(prefix))) or not _LABEL_NAME.fullmatch(short):
            raise ManifestError(f"{where}: label key {key!r} is not a qualified name")
        if not (isinstance(value, str) and _LABEL_VALUE.fullmatch(value)):
            raise ManifestError(f"{where}: label {key}={value!r} is not a valid label value")
    for key, value in (meta.get("annotations") or {}).items():
        if not isinstance(value, str):
            raise ManifestError(f"{where}: annotation {key}={value!r} is not a string")


def _closed(schema: Any) -> Any:
    """`schema` with `additionalProperties: false` on every object that lists `properties` and neither
    allows more nor preserves unknown fields; `metadata` (ObjectMeta, which CRDs leave open) stays open."""
    if isinstance(schema, list):
        return [_closed(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    closed = {k: _closed(v) for k, v in schema.items() if k != "properties"}
    if "properties" in schema:
        closed["properties"] = {k: (v if k == "metadata" else _closed(v)) for k, v in schema["properties"].items()}
        if "additionalProperties" not in schema and not schema.get("x-kubernetes-preserve-unknown-fields"):
            closed["additionalProperties"] = False
    return closed
