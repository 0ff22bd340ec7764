"""The stackwise policy pack (pulumi-policy): guardrails every stack must pass.

- encryption at rest with a customer-managed key everywhere data rests;
- no public bucket, container, registry or endpoint;
- required tags (project, env, owner, cost-center) on every taggable resource;
- GPU types on the stack's allow-list (policy config `allowedGpus`);
- endpoint replicas bounded (policy config `maxReplicas`);
- a monthly budget with alerts;
- Kubernetes names the API server and the clouds accept (objects, clusters, node pools).

Real use: `pulumi preview --policy-pack infra/policy --policy-pack-config policy-config.json`.
Tests call each policy's `validate` on the resources the program registers under mocks.
Properties are the engine's camelCase names, as both the engine and the mocks send them.

Each guardrail is shared; what it checks on each resource type comes from the clouds
(`InfraCloud.policy`, infra/<cloud>/policy.py), and a cloud may add policies of its own
(AWS: every S3 bucket has its encryption configuration and public access block).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from pulumi_policy import (PolicyConfigSchema, ResourceValidationArgs, ResourceValidationPolicy, StackValidationArgs,
                           StackValidationPolicy)

from stackwise import catalog
from stackwise.clouds import one_of

from ..cloud import PolicyRules, infra_clouds
from ..config import REQUIRED_TAGS

Report = Callable[..., None]
DEFAULT_ALLOWED_GPUS = ["T4", "L4", "A10G"]
DEFAULT_MAX_REPLICAS = 10


def _rules() -> list[tuple[str, PolicyRules]]:
    """(cloud name, its rules) for every cloud of the registry (read at each check)."""
    return [(cloud.name, cloud.policy) for cloud in infra_clouds()]


def _each(part: str, resource_type: str) -> list[tuple[str, Any]]:
    """(cloud name, check) of every cloud whose rules `part` has one for `resource_type`."""
    return [(name, getattr(rules, part)[resource_type]) for name, rules in _rules()
            if resource_type in getattr(rules, part)]


# -- encryption at rest, nothing public ----------------------------------------------------------
def _encryption(args: ResourceValidationArgs, report: Report) -> None:
    for _, check in _each("encryption", args.resource_type):
        check(args.props, report)


def _not_public(args: ResourceValidationArgs, report: Report) -> None:
    for _, check in _each("not_public", args.resource_type):
        check(args.props, report)


# -- required tags ---------------------------------------------------------------------------------
def _tags(args: ResourceValidationArgs, report: Report) -> None:
    for _, key in _each("tags", args.resource_type):
        tags = args.props.get(key) or {}
        missing = [t for t in REQUIRED_TAGS if not tags.get(t)]
        if missing:
            report(f"missing required tags: {', '.join(missing)}")


# -- GPUs on the allow-list ------------------------------------------------------------------------
def _gpus(args: ResourceValidationArgs, report: Report) -> None:
    allowed = list((args.get_config() or {}).get("allowedGpus") or DEFAULT_ALLOWED_GPUS)
    for cloud, instances in _each("instances", args.resource_type):
        for instance in instances(args.props):
            offer = catalog.offer_for_instance(cloud, instance)
            if offer is None:
                report(f"instance type {instance!r} is not in the GPU catalog; use a catalog GPU")
            elif offer.gpu not in allowed:
                report(f"GPU {offer.gpu} ({instance}) is not on the allow-list: {', '.join(allowed)}")


# -- bounded replicas ------------------------------------------------------------------------------
def _replicas(args: ResourceValidationArgs, report: Report) -> None:
    limit = int((args.get_config() or {}).get("maxReplicas") or DEFAULT_MAX_REPLICAS)
    for _, bounds in _each("replicas", args.resource_type):
        low, high = bounds(args.props)
        if high is None:
            report(f"no maximum replica count: set one of at most {limit}")
        elif float(high) > limit:
            report(f"maximum replicas {high:g} exceeds the bound {limit}")
        elif low is not None and float(low) > float(high):
            report(f"minimum replicas {low:g} exceeds maximum {high:g}")


# -- a budget --------------------------------------------------------------------------------------
def budget_types() -> tuple[str, ...]:
    """Every cloud's budget resource types."""
    return tuple(t for _, rules in _rules() for t in rules.budgets)


BUDGET_TYPES = budget_types()


def _budget(args: StackValidationArgs, report: Report) -> None:
    types = budget_types()
    budgets = [r for r in args.resources if r.resource_type in types]
    if not budgets:
        labels = [rules.budget_label for _, rules in _rules() if rules.budget_label]
        report(f"the stack has no monthly budget ({one_of(labels, quoted=False)})")
        return
    for r in budgets:
        alerts = (r.props.get("notifications") or r.props.get("thresholdRules")
                  or {}) if isinstance(r.props, dict) else None
        if not alerts:
            report(f"budget {r.name} sends no alerts")


# -- Kubernetes names -------------------------------------------------------------------------------
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_DNS_SUBDOMAIN = re.compile(r"^(?=.{1,253}$)[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
# Kinds whose names end up in DNS names or label values, so must be RFC 1123 labels.
_LABEL_KINDS = {"Namespace", "Service", "LocalQueue", "ClusterQueue"}


def _names(args: ResourceValidationArgs, report: Report) -> None:
    t, p = args.resource_type, args.props
    if t.startswith("kubernetes:") and isinstance(p.get("metadata"), dict):
        name, kind = str(p["metadata"].get("name") or ""), str(p.get("kind") or t.rsplit(":", 1)[-1])
        pattern = _DNS_LABEL if kind in _LABEL_KINDS else _DNS_SUBDOMAIN
        if not pattern.fullmatch(name):
            report(f"{kind} name {name!r} is not a valid Kubernetes name (lower-case letters, digits and '-'"
                   f"{'' if kind in _LABEL_KINDS else ', dots between parts'}; at most "
                   f"{63 if kind in _LABEL_KINDS else 253} characters)")
    # What each cloud accepts for a cluster's or a node pool's name (their API references).
    for _, check in _each("names", t):
        check(p, report)


_GPU_SCHEMA = PolicyConfigSchema(properties={"allowedGpus": {"type": "array", "items": {"type": "string"},
                                                             "default": DEFAULT_ALLOWED_GPUS}})
_REPLICA_SCHEMA = PolicyConfigSchema(properties={"maxReplicas": {"type": "integer", "default": DEFAULT_MAX_REPLICAS}})

POLICIES = [
    ResourceValidationPolicy(name="encryption-at-rest", validate=_encryption,
                             description="Data at rest is encrypted with the stack's customer-managed key."),
    ResourceValidationPolicy(name="no-public-access", validate=_not_public,
                             description="No bucket, container, registry, workspace or endpoint is public."),
    ResourceValidationPolicy(name="required-tags", validate=_tags,
                             description="Taggable resources carry project, env, owner and cost-center."),
    ResourceValidationPolicy(name="gpu-allow-list", validate=_gpus, config_schema=_GPU_SCHEMA,
                             description="GPU instances are catalog GPUs on the stack's allow-list."),
    ResourceValidationPolicy(name="bounded-replicas", validate=_replicas, config_schema=_REPLICA_SCHEMA,
                             description="Endpoint replicas and cluster nodes have a maximum within the bound."),
    StackValidationPolicy(name="budget-present", validate=_budget,
                          description="The stack has a monthly budget with alerts."),
    ResourceValidationPolicy(name="kubernetes-names", validate=_names,
                             description="Kubernetes objects, clusters and node pools have names the API server "
                                         "and the cloud accept."),
    # The clouds' own policies.
    *(StackValidationPolicy(name=name, validate=validate, description=description)
      for _, rules in _rules() for name, description, validate in rules.stack_policies),
]


def check(resources: list[Any], config: dict[str, dict[str, Any]] | None = None) -> list[tuple[str, str, str]]:
    """Run every policy on resources recorded under mocks (`stackwise.infra.offline`).

    `config` is per policy name, as in `--policy-pack-config`. Returns (policy, resource name,
    message) for each violation; empty when the stack passes.
    """
    from pulumi_policy.policy import PolicyCustomTimeouts, PolicyResource, PolicyResourceOptions

    config = config or {}
    violations: list[tuple[str, str, str]] = []

    def options() -> PolicyResourceOptions:
        return PolicyResourceOptions(False, [], None, [], PolicyCustomTimeouts(0, 0, 0), [])

    custom = [r for r in resources if r.custom]
    for policy in POLICIES:
        def report(message: str, urn: str | None = None, *, _p=policy, _name="") -> None:
            violations.append((_p.name, _name, message))

        if isinstance(policy, ResourceValidationPolicy):
            for r in custom:
                args = ResourceValidationArgs(r.type, r.inputs, r.urn, r.name, options(), None,
                                              config.get(policy.name, {}))
                for validate in policy.validate if isinstance(policy.validate, list) else [policy.validate]:
                    validate(args, lambda m, urn=None, _n=r.name, _p=policy: violations.append((_p.name, _n, m)))
        else:
            # Stack policies see outputs (the engine's state), as after a real preview.
            stack = [PolicyResource(r.type, r.state or r.inputs, r.urn, r.name, options(), None, None, [], {}) for r in custom]
            policy.validate(StackValidationArgs(stack, config.get(policy.name, {})), report)
    return violations
