"""Small helpers more than one cloud's components use (the shared types are in infra/cloud.py)."""

from __future__ import annotations

import ipaddress


def subnets(cidr: str, count: int, prefix: int = 20) -> list[str]:
    """The first `count` /`prefix` ranges of `cidr` (private subnets, one per zone)."""
    return [str(net) for net in list(ipaddress.ip_network(cidr).subnets(new_prefix=prefix))[:count]]


def is_hf_model(model: str) -> bool:
    """A Hugging Face model id (`org/name`), as opposed to an artifact URI (`s3://...`)."""
    return "://" not in model
