"""Validate a Kubernetes manifest (a dict) the way the API server would judge its shape.

Core objects (apiVersion v1, batch/v1, apps/v1, rbac.authorization.k8s.io/v1, ...) are checked by
kubernetes-validate against the pinned Kubernetes version's strict JSON schemas (an unknown
field is an error, as with `kubectl apply --validate=strict`). Custom resources are checked with
jsonschema against the `openAPIV3Schema` of the vendored upstream CRD (tests/golden/crds/, its
README names repository, tag and path) for the manifest's group, version and kind; a custom
kind with no vendored CRD is an error, never a silent pass.

Shared by the infra, compute and deploy tests: keep `validate_manifest(obj)`'s signature.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path
from typing import Any

from stackwise.adapters.kube import KUBERNETES_VERSION  # the version manifests target and are validated against

CRDS = Path(__file__).resolve().parent / "golden" / "crds"


class ManifestError(AssertionError):
    """A manifest the API server would refuse (its kind, name and what is wrong)."""


@functools.cache
def crd_schemas() -> dict[tuple[str, str], dict[str, Any]]:
    """(apiVersion, kind) -> openAPIV3Schema, for every version of every vendored CRD."""
    import yaml

    schemas: dict[tuple[str, str], dict[str, Any]] = {}
    for path in sorted(CRDS.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")):
            if not doc or doc.get("kind") != "CustomResourceDefinition":
                continue
            spec = doc["spec"]
            for version in spec["versions"]:
                if version.get("served", True):
                    key = (f"{spec['group']}/{version['name']}", spec["names"]["kind"])
                    schemas[key] = version["schema"]["openAPIV3Schema"]
    return schemas


def _core_group(api_version: str) -> bool:
    group = api_version.rpartition("/")[0]
    return "." not in group or group.endswith(".k8s.io") and group.split(".")[0] in (
        "rbac", "networking", "policy", "storage", "admissionregistration", "apiextensions", "apiregistration",
        "certificates", "coordination", "discovery", "events", "flowcontrol", "node", "scheduling", "resource")


def validate_manifest(obj: dict[str, Any]) -> None:
    """Raise ManifestError unless `obj` is a valid object of its apiVersion and kind."""
    if not isinstance(obj, dict) or not obj.get("apiVersion") or not obj.get("kind"):
        raise ManifestError(f"not a Kubernetes object (apiVersion and kind): {obj!r:.200}")
    obj = {k: v for k, v in obj.items() if k != "status"}  # a write to the main resource ignores it
    api_version, kind = obj["apiVersion"], obj["kind"]
    name = (obj.get("metadata") or {}).get("name")
    where = f"{kind} {name!r} ({api_version})"
    _check_metadata(obj.get("metadata") or {}, where)
    schema = crd_schemas().get((api_version, kind))
    if schema is not None:
        import jsonschema

        # CRD schemas are OpenAPI v3 structural schemas: Draft 7 reads their keywords (the
        # x-kubernetes-* extensions are ignored, as jsonschema ignores unknown keywords).
        validator = jsonschema.Draft7Validator(_closed(schema))
        errors = sorted(validator.iter_errors(obj), key=lambda e: list(e.absolute_path))
        if errors:
            first = errors[0]
            path = ".".join(str(p) for p in first.absolute_path) or "(root)"
            raise ManifestError(f"{where}: {path}: {first.message}")
        return
    if not _core_group(api_version):
        raise ManifestError(f"{where}: no vendored CRD for this custom resource under {CRDS} (add the upstream "
                            "CRD YAML and a README line)")
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
    """What the API server checks of every object's metadata and the schemas do not: the name (a DNS
    subdomain, at most 253 characters) and the label keys and values (qualified names, 63 characters)."""
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
            raise ManifestError(f"{where}: label {key}={value!r} is not a valid label value (a string of at most 63 "
                                "characters: letters, digits, '-', '_', '.')")
    for key, value in (meta.get("annotations") or {}).items():
        if not isinstance(value, str):
            raise ManifestError(f"{where}: annotation {key}={value!r} is not a string")


def _closed(schema: Any) -> Any:
    """The schema with `additionalProperties: false` wherever it lists `properties` and allows no
    other keys, as the API server prunes (and `--validate=strict` refuses) unknown fields of a
    structural schema. Objects marked x-kubernetes-preserve-unknown-fields stay open; `metadata`
    (ObjectMeta, not described by CRDs) is left open too."""
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
