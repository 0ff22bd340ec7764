"""Azure Monitor autoscale settings for the local ARM server (azureml_server.py): the
`Microsoft.Insights/autoscalesettings` routes, each PUT body checked as ARM would check it.

The judge is the ARM REST schema of autoscale API 2022-10-01 (azure-rest-api-specs,
specification/monitor/resource-manager/Microsoft.Insights/stable/2022-10-01/autoscale_API.json),
transcribed below as JSON Schema and applied with `jsonschema`: required keys, types, enums, the
capitalized `DimensionName` / `Operator` / `Values` of a rule's dimensions, and no key the schema
lacks (ARM would ignore one; refusing it catches a misspelled key). azure-mgmt-monitor, whose models
would be the first choice, is not installed here. On top, the limits the schema's descriptions
state: at most 20 profiles and 10 rules per profile, timeGrain 1 minute to 12 hours, timeWindow
5 minutes to 12 hours, cooldown 1 minute to 1 week, a scale action's value >= 1; and this
emulator's own assumptions (not captured Azure answers): capacities are integers with
minimum <= default <= maximum, and the target and every metric resource must exist on the server.
"""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Any

API_VERSION = "2022-10-01"
PATH = re.compile(r"^/subscriptions/([^/]+)/resourceGroups/([^/]+)/providers/Microsoft\.Insights/autoscalesettings/"
                  r"([^/]+)$", re.IGNORECASE)


def _object(properties: dict[str, Any], required: list[str]) -> dict[str, Any]:
    return {"type": "object", "properties": properties, "required": required, "additionalProperties": False}


_STRING, _DURATION = {"type": "string"}, {"type": "string", "pattern": r"^P"}
_DIMENSION = _object({"DimensionName": _STRING, "Operator": {"enum": ["Equals", "NotEquals"]},
                      "Values": {"type": "array", "items": _STRING}}, ["DimensionName", "Operator", "Values"])
_TRIGGER = _object({
    "metricName": _STRING, "metricNamespace": _STRING, "metricResourceUri": _STRING, "metricResourceLocation": _STRING,
    "timeGrain": _DURATION, "statistic": {"enum": ["Average", "Min", "Max", "Sum", "Count"]}, "timeWindow": _DURATION,
    "timeAggregation": {"enum": ["Average", "Minimum", "Maximum", "Total", "Count", "Last"]},
    "operator": {"enum": ["Equals", "NotEquals", "GreaterThan", "GreaterThanOrEqual", "LessThan", "LessThanOrEqual"]},
    "threshold": {"type": "number"}, "dimensions": {"type": "array", "items": _DIMENSION},
    "dividePerInstance": {"type": "boolean"}},
    ["metricName", "metricResourceUri", "timeGrain", "statistic", "timeWindow", "timeAggregation", "operator",
     "threshold"])
_ACTION = _object({"direction": {"enum": ["None", "Increase", "Decrease"]},
                   "type": {"enum": ["ChangeCount", "PercentChangeCount", "ExactCount", "ServiceAllowedNextValue"]},
                   "value": _STRING, "cooldown": _DURATION}, ["direction", "type", "cooldown"])
_PROFILE = _object({
    "name": _STRING,
    "capacity": _object({"minimum": _STRING, "maximum": _STRING, "default": _STRING},
                        ["minimum", "maximum", "default"]),
    "rules": {"type": "array", "items": _object({"metricTrigger": _TRIGGER, "scaleAction": _ACTION},
                                                ["scaleAction", "metricTrigger"])},
    "fixedDate": {"type": "object"}, "recurrence": {"type": "object"}}, ["rules", "name", "capacity"])
SCHEMA = _object({
    "location": _STRING, "tags": {"type": "object", "additionalProperties": _STRING},
    "properties": _object({
        "profiles": {"type": "array", "maxItems": 20, "items": _PROFILE}, "notifications": {"type": "array"},
        "enabled": {"type": "boolean"},
        "predictiveAutoscalePolicy": _object({"scaleMode": {"enum": ["Disabled", "ForecastOnly", "Enabled"]},
                                              "scaleLookAheadTime": _DURATION}, ["scaleMode"]),
        "name": _STRING, "targetResourceUri": _STRING, "targetResourceLocation": _STRING}, ["profiles"])},
    ["location", "properties"])


def _duration(text: str) -> timedelta | None:
    import isodate

    try:
        value = isodate.parse_duration(text)
    except (isodate.ISO8601Error, ValueError):
        return None
    return value if isinstance(value, timedelta) else None


def problems(body: Any, exists: Any) -> list[str]:
    """Why ARM refuses this autoscale setting PUT body (empty: accepted). `exists(resource_id)`
    says whether a resource is on the server."""
    import jsonschema

    validator = jsonschema.Draft7Validator(SCHEMA)
    found = [f"{'/'.join(str(p) for p in e.absolute_path) or '(body)'}: {e.message}"
             for e in validator.iter_errors(body)]
    if found:
        return found
    props = body["properties"]
    if props.get("targetResourceUri") and not exists(props["targetResourceUri"]):
        found.append(f"targetResourceUri {props['targetResourceUri']} does not exist")
    limits = {"timeGrain": (timedelta(minutes=1), timedelta(hours=12)),
              "timeWindow": (timedelta(minutes=5), timedelta(hours=12))}
    for p, profile in enumerate(props["profiles"]):
        caps = profile["capacity"]
        try:
            low, high, default = (int(caps[k]) for k in ("minimum", "maximum", "default"))
            if not 0 <= low <= default <= high:
                found.append(f"profiles/{p}/capacity: needs minimum <= default <= maximum, not {caps}")
        except ValueError:
            found.append(f"profiles/{p}/capacity: counts must be integers, not {caps}")
        if len(profile["rules"]) > 10:
            found.append(f"profiles/{p}/rules: {len(profile['rules'])} rules, at most 10")
        for r, rule in enumerate(profile["rules"]):
            trigger, action = rule["metricTrigger"], rule["scaleAction"]
            for key, (least, most) in limits.items():
                span = _duration(trigger[key])
                if span is None or not least <= span <= most:
                    found.append(f"profiles/{p}/rules/{r}/metricTrigger/{key}: {trigger[key]} is out of range")
            cooldown = _duration(action["cooldown"])
            if cooldown is None or not timedelta(minutes=1) <= cooldown <= timedelta(weeks=1):
                found.append(f"profiles/{p}/rules/{r}/scaleAction/cooldown: {action['cooldown']} is out of range")
            if not str(action.get("value", "1")).isdigit() or int(action.get("value", "1")) < 1:
                found.append(f"profiles/{p}/rules/{r}/scaleAction/value: must be 1 or more")
            if not exists(trigger["metricResourceUri"]):
                found.append(f"profiles/{p}/rules/{r}/metricTrigger/metricResourceUri: "
                             f"{trigger['metricResourceUri']} does not exist")
    return found
