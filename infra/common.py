"""What every cloud's components share: the outputs they hand back to the program."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

import pulumi


@dataclass
class PlatformOutputs:
    """The training platform's part of the stack contract."""

    artifact_store: pulumi.Output[str]
    job_role: pulumi.Output[str]
    training_image: pulumi.Output[str]
    secrets: dict[str, pulumi.Output[str]] = field(default_factory=dict)


def subnets(cidr: str, count: int, prefix: int = 20) -> list[str]:
    """The first `count` /`prefix` ranges of `cidr` (private subnets, one per zone)."""
    return [str(net) for net in list(ipaddress.ip_network(cidr).subnets(new_prefix=prefix))[:count]]


def is_hf_model(model: str) -> bool:
    """A Hugging Face model id (`org/name`), as opposed to an artifact URI (`s3://...`)."""
    return "://" not in model
