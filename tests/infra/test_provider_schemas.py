"""Every input the program hands a cloud provider, checked against that provider's own schema.

The offline run records each resource's inputs as the engine receives them. Here each one is
judged by the installed provider SDK (pulumi_aws, pulumi_gcp, pulumi_azure_native, and the
docker-build and pinecone providers): the type token names the resource class through the
provider's own registration, the class names its `<Resource>Args` input type, and the
`@pulumi.input_type` metadata of that class (Pulumi names from `pulumi.getter(name=...)`,
property annotations) is walked recursively:

- every key must be a Pulumi (engine) name of the Args class it lands in: an unknown key, or a
  Python snake_case name the SDK never translated (a plain dict passed where a union of typed
  Args is expected stays untranslated), is a finding;
- required properties (annotations that do not admit None) must be present;
- nested Args (a dict, or a list or map of dicts) are checked against the nested Args class
  from the annotation; a union of Args classes must match one member;
- enum values must be one of the provider's enum members (the azure-native str enums);
- scalars must have the annotated wire type (a string where a number is expected fails).

A real `pulumi up` would send the same inputs to the provider plugin, which rejects or silently
drops what these checks find; here the finding is in CI, with the resource and the path.
"""

from __future__ import annotations

import enum
import functools
import importlib
import inspect
import re
import typing
from collections import abc
from typing import Any

import pytest

from .conftest import CLOUD_STACKS

pytest.importorskip("pulumi", reason="pip install 'stackwise[infra]'")
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

_SECRET_SIG = "4dabf18193072939515e22adb298388d"
_SECRET_VALUE = "1b47061264138c4ac30d75fd1eb44270"
_EXPECTED = re.compile(r"Expected value is '([^']+)'")
# Which Python SDK registers a provider's types (each registers them when imported).
_SDKS = {"aws": "pulumi_aws", "gcp": "pulumi_gcp", "azure-native": "pulumi_azure_native",
         "docker-build": "pulumi_docker_build", "pinecone": "pinecone_pulumi", "kubernetes": "pulumi_kubernetes"}


# -- from a type token to the provider's Args class -------------------------------------------------

def resource_class(token: str) -> type:
    """The provider SDK's resource class for a type token, through the provider's own registration
    (`pulumi.runtime.register_resource_module` / `register_resource_package`)."""
    from pulumi.runtime import rpc

    pkg, mod, name = token.split(":")
    provider = name if pkg == "pulumi" and mod == "providers" else pkg
    if provider in _SDKS:
        importlib.import_module(_SDKS[provider])  # importing a provider SDK registers its types
    if pkg == "pulumi" and mod == "providers":
        for package in rpc._RESOURCE_PACKAGES.get(name, []):
            info = getattr(package, "pkg_info", None)
            if info and info.get("token") == token:
                return getattr(importlib.import_module(info["fqn"]), info["class"])
        raise LookupError(f"no installed provider package registers {token}")
    for module in rpc._RESOURCE_MODULES.get(f"{pkg}:{mod}", []):
        info = getattr(module, "mod_info", None)
        if info and token in info.get("classes", {}):
            return getattr(importlib.import_module(info["fqn"]), info["classes"][token])
    raise LookupError(f"no installed provider SDK registers the resource type {token}")


def args_class(token: str) -> type:
    """The `<Resource>Args` input type declared beside the resource class."""
    from pulumi import _types

    cls = resource_class(token)
    module = importlib.import_module(cls.__module__)
    # The generator names it `<Resource>InitArgs` where a nested input type already took
    # `<Resource>Args` (aws BucketVersioning, azure-native ActionGroup, Subnet): take the one
    # defined in the resource's own module.
    for name in (f"{cls.__name__}InitArgs", f"{cls.__name__}Args"):
        args = getattr(module, name, None)
        if args is not None and args.__module__ == cls.__module__ and _types.is_input_type(args):
            return args
    raise LookupError(f"{cls.__module__} declares no input type for {cls.__name__}")


# -- the annotations, without Pulumi's plumbing (Input = T | Awaitable[T] | Output[T]) ---------------

def _is_plumbing(arg: Any) -> bool:
    import pulumi

    origin = typing.get_origin(arg)
    if arg is pulumi.Output or origin is pulumi.Output:
        return True
    if isinstance(arg, typing.ForwardRef):
        return arg.__forward_arg__.startswith("Output[")
    return origin in (abc.Awaitable, abc.Coroutine) or typing.is_typeddict(arg)


def members(hint: Any) -> tuple[list[Any], bool]:
    """The alternatives a wire value may take, and whether None (absent) is allowed."""
    if typing.get_origin(hint) in (typing.Union, getattr(__import__("types"), "UnionType", typing.Union)):
        found: list[Any] = []
        optional = False
        for arg in typing.get_args(hint):
            if arg is type(None):
                optional = True
            elif not _is_plumbing(arg):
                inner, inner_optional = members(arg)
                found.extend(m for m in inner if m not in found)
                optional = optional or inner_optional
        return found, optional
    return [hint], hint is type(None)


@functools.cache
def properties(cls: type) -> tuple[dict[str, Any], frozenset[str], dict[str, str]]:
    """Pulumi name -> annotation, the required Pulumi names, and Python name -> Pulumi name."""
    from pulumi import _types

    hints = _types._raw_return_hints(cls)
    py_to_pulumi = _types.input_type_py_to_pulumi_names(cls)
    required = frozenset(name for name, hint in hints.items() if not members(hint)[1])
    return hints, required, py_to_pulumi


@functools.cache
def constants(cls: type) -> dict[str, str]:
    """Pulumi name -> the one value a discriminator property takes (the member of a union this
    Args class is), from the generated getter's "Expected value is '...'" (azure-native)."""
    from pulumi import _types

    found = {}
    for _, pulumi_name, prop in _types._py_properties(cls):
        match = _EXPECTED.search(prop.fget.__doc__ or "")
        if match:
            found[pulumi_name] = match.group(1)
    return found


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def _type_name(typ: Any) -> str:
    return getattr(typ, "__name__", None) or str(typ).replace("typing.", "")


# -- the recursive check ------------------------------------------------------------------------------

def check_value(value: Any, hint: Any, path: str) -> list[str]:
    """Findings for one value against one annotation (empty when the provider accepts it)."""
    if isinstance(value, dict) and value.get(_SECRET_SIG) == _SECRET_VALUE:
        value = value.get("value")  # a secret: the provider sees the value inside
    if value is None:
        return []
    alternatives, _ = members(hint)
    if not alternatives or any(a is Any for a in alternatives):
        return []
    enums = [a for a in alternatives if inspect.isclass(a) and issubclass(a, enum.Enum)]
    if enums and isinstance(value, str):
        allowed = [m.value for e in enums for m in e]
        if value not in allowed:
            return [f"{path}: {value!r} is not a value of {'/'.join(e.__name__ for e in enums)} "
                    f"(one of {sorted(map(str, allowed))})"]
        return []
    failures: list[list[str]] = []
    for alternative in alternatives:
        if inspect.isclass(alternative) and issubclass(alternative, enum.Enum):
            continue
        found = _check_one(value, alternative, path)
        if not found:
            return []
        failures.append(found)
    if not failures:
        return [f"{path}: {type(value).__name__} value {value!r} where {_type_name(hint)} is expected"]
    if len(failures) == 1:
        return failures[0]
    # A union (of Args classes, say): report the member the value names through its
    # discriminator (under either name), else the closest one.
    def distance(pair: tuple[Any, list[str]]) -> tuple[int, int]:
        member, found = pair
        named = inspect.isclass(member) and isinstance(value, dict) and any(
            constant in (value.get(key), value.get(_snake(key))) for key, constant in constants(member).items())
        return (0 if named else 1, len(found))

    tried = [a for a in alternatives if not (inspect.isclass(a) and issubclass(a, enum.Enum))]
    closest = min(zip(tried, failures), key=distance)[1]
    names = ", ".join(_type_name(a) for a in alternatives)
    return [f"{path}: matches no member of [{names}]; closest: {closest[0]}"] + closest[1:]


def _check_one(value: Any, typ: Any, path: str) -> list[str]:
    from pulumi import _types

    origin = typing.get_origin(typ)
    if origin is typing.Literal:
        return [] if value in typing.get_args(typ) else [f"{path}: {value!r} is not one of {typing.get_args(typ)}"]
    if typ in (list, abc.Sequence) or origin in (list, abc.Sequence):
        if not isinstance(value, list):
            return [f"{path}: {type(value).__name__} where a list is expected"]
        args = typing.get_args(typ)
        return [f for i, v in enumerate(value) for f in (check_value(v, args[0], f"{path}[{i}]") if args else [])]
    if typ in (dict, abc.Mapping) or origin in (dict, abc.Mapping):
        if not isinstance(value, dict):
            return [f"{path}: {type(value).__name__} where a map is expected"]
        args = typing.get_args(typ)
        if len(args) != 2:
            return []
        return [f for k, v in value.items() for f in check_value(v, args[1], f"{path}.{k}")]
    if not inspect.isclass(typ):
        return []  # an annotation no wire value can be checked against
    if typ is bool:
        return [] if isinstance(value, bool) else [f"{path}: {value!r} where a bool is expected"]
    if typ is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
        return [] if ok else [f"{path}: {value!r} where an integer is expected"]
    if typ is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        return [] if ok else [f"{path}: {value!r} where a number is expected"]
    if typ is str:
        return [] if isinstance(value, str) else [f"{path}: {type(value).__name__} {value!r} where a string is expected"]
    if _types.is_input_type(typ):
        if not isinstance(value, dict):
            return [f"{path}: {type(value).__name__} where {typ.__name__} (an object) is expected"]
        return check_args(value, typ, path)
    return [] if isinstance(value, typ) else [f"{path}: {type(value).__name__} where {typ.__name__} is expected"]


def check_args(inputs: dict[str, Any], cls: type, path: str) -> list[str]:
    """Findings for a map of engine-named inputs against an `@pulumi.input_type` class."""
    hints, required, py_to_pulumi = properties(cls)
    findings = []
    for key, value in inputs.items():
        where = f"{path}.{key}" if path else key
        if key not in hints:
            if key in py_to_pulumi and py_to_pulumi[key] != key:
                findings.append(f"{where}: Python name {key!r} reached the engine untranslated; "
                                f"{cls.__name__} expects {py_to_pulumi[key]!r} (pass {cls.__name__}(...), "
                                f"or the engine's camelCase keys, where a union of typed inputs is expected)")
            else:
                findings.append(f"{where}: {cls.__name__} has no input {key!r}")
            continue
        findings.extend(check_value(value, hints[key], where))
    for name, constant in constants(cls).items():
        if name in inputs and inputs[name] != constant:
            findings.append(f"{path + '.' if path else ''}{name}: {inputs[name]!r}, but {cls.__name__} "
                            f"takes only {constant!r}")
    for name in sorted(required - inputs.keys()):
        findings.append(f"{path + '.' if path else ''}{name}: required by {cls.__name__}, missing")
    return findings


def check_resource(token: str, inputs: dict[str, Any]) -> list[str]:
    """Findings for one recorded resource (its inputs as the engine received them)."""
    return check_args(inputs, args_class(token), "")


def is_custom_kubernetes_object(token: str) -> bool:
    """A pulumi-kubernetes CustomResource (Kueue, PodMonitor): its type token names the CRD's group,
    version and kind, which no provider SDK registers; the CRD's own schema judges it instead."""
    pkg, mod, _ = token.split(":")
    if pkg != "kubernetes":
        return False
    importlib.import_module("pulumi_kubernetes")
    from pulumi.runtime import rpc

    return not any(token in (getattr(m, "mod_info", None) or {}).get("classes", {})
                   for m in rpc._RESOURCE_MODULES.get(f"{pkg}:{mod}", []))


def check_custom_kubernetes_object(inputs: dict[str, Any]) -> list[str]:
    """Findings for a CustomResource: its inputs are the object, judged by the vendored upstream CRD."""
    from kube_validate import ManifestError, validate_manifest

    try:
        validate_manifest(inputs)
    except ManifestError as exc:
        return [str(exc)]
    return []


def findings_of(run) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for r in run.resources:
        if not r.custom:
            continue  # components (stackwise:...) have no provider schema
        if is_custom_kubernetes_object(r.type):
            problems = check_custom_kubernetes_object(r.inputs)
            if problems:
                found[f"{r.type} {r.name}"] = problems
            continue
        problems = check_resource(r.type, r.inputs)
        if problems:
            found[f"{r.type} {r.name}"] = problems
    return found


def _report(found: dict[str, list[str]]) -> str:
    return "\n".join(f"{resource}:\n  " + "\n  ".join(problems) for resource, problems in found.items())


# -- the stacks ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", CLOUD_STACKS)
def test_every_input_matches_the_provider_schema(name, offline_run):
    run = offline_run(name)
    custom = [r for r in run.resources if r.custom]
    assert custom, name
    for r in custom:
        if not is_custom_kubernetes_object(r.type):
            args_class(r.type)  # every type token resolves to an installed provider's Args class
    found = findings_of(run)
    assert not found, (
        f"stack {name}: inputs the provider's own schema rejects (a `pulumi up` would fail or drop "
        f"them; fix the component in infra/{run.config.cloud}/):\n{_report(found)}")


# -- the checker itself, on the real provider classes ---------------------------------------------------

def _clean_metric_alert() -> dict[str, Any]:
    return {
        "resourceGroupName": "rg", "scopes": ["/subscriptions/x"], "enabled": True, "severity": 2,
        "evaluationFrequency": "PT5M", "windowSize": "PT15M", "location": "global",
        "criteria": {"odataType": "Microsoft.Azure.Monitor.SingleResourceMultipleMetricCriteria", "allOf": [
            {"criterionType": "StaticThresholdCriterion", "name": "errors", "metricName": "RequestsPerMinute",
             "operator": "GreaterThan", "threshold": 5, "timeAggregation": "Average",
             "dimensions": [{"name": "statusCodeClass", "operator": "Include", "values": ["5xx"]}]}]},
        "actions": [{"actionGroupId": "/subscriptions/x/ag"}],
    }


def test_checker_accepts_engine_named_typed_inputs():
    pytest.importorskip("pulumi_azure_native")
    assert check_resource("azure-native:monitor:MetricAlert", _clean_metric_alert()) == []


def test_checker_rejects_untranslated_snake_case_in_a_union():
    """Issue 12 item 1: a plain dict with Python names passed as MetricAlert criteria."""
    pytest.importorskip("pulumi_azure_native")
    inputs = _clean_metric_alert()
    criteria = inputs["criteria"]
    inputs["criteria"] = {"odata_type": criteria["odataType"], "all_of": criteria["allOf"]}
    found = check_resource("azure-native:monitor:MetricAlert", inputs)
    assert any("'all_of' reached the engine untranslated" in f and "'allOf'" in f for f in found), found


def test_checker_rejects_unknown_nested_keys_enums_types_and_missing_required():
    pytest.importorskip("pulumi_azure_native")
    inputs = _clean_metric_alert()
    inputs["criteria"]["allOf"][0]["operator"] = "Above"            # not a ConditionOperator value
    inputs["criteria"]["allOf"][0]["dimensions"][0]["value"] = ["x"]  # unknown nested key
    inputs["severity"] = "2"                                          # a string for an integer
    del inputs["windowSize"]                                          # required
    found = "\n".join(check_resource("azure-native:monitor:MetricAlert", inputs))
    assert "criteria.allOf[0].operator: 'Above' is not a value of" in found, found
    assert "dimensions[0].value: MetricDimensionArgs has no input 'value'" in found, found
    assert "severity: '2' where an integer is expected" in found, found
    assert "windowSize: required by MetricAlertArgs, missing" in found, found


def test_checker_walks_lists_of_nested_args_on_aws():
    pytest.importorskip("pulumi_aws")
    token = "aws:sagemaker/endpointConfiguration:EndpointConfiguration"
    good = {"productionVariants": [{"modelName": "m", "instanceType": "ml.g5.xlarge", "initialInstanceCount": 1,
                                    "variantName": "primary"}]}
    assert check_resource(token, good) == []
    bad = {"productionVariants": [{"model_name": "m", "instanceType": "ml.g5.xlarge", "initialInstanceCount": 1.5}]}
    found = "\n".join(check_resource(token, bad))
    assert "productionVariants[0].model_name: Python name 'model_name' reached the engine untranslated" in found
    assert "productionVariants[0].initialInstanceCount: 1.5 where an integer is expected" in found
    assert check_resource(token, {}) == ["productionVariants: required by EndpointConfigurationArgs, missing"]


def test_unknown_type_token_is_an_error():
    pytest.importorskip("pulumi_aws")
    with pytest.raises(LookupError, match="aws:sagemaker/nothing:Nothing"):
        args_class("aws:sagemaker/nothing:Nothing")
