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


# SageMaker instance families with local NVMe instance storage. That storage is encrypted by a
# hardware module on the instance, and CreateEndpointConfig *fails* when a KmsKeyId is given for
# such an instance (SageMaker API reference, CreateEndpointConfig.KmsKeyId); the KMS key encrypts
# only the EBS volumes of the other families.
_LOCAL_NVME_FAMILIES = ("g4dn", "g5", "g6", "g6e", "p3dn", "p4d", "p4de", "p5", "p5e", "p5en", "trn1", "trn1n",
                        "m5d", "c5d", "r5d", "m6id", "c6id", "r6id")


def has_local_nvme(instance_type: str) -> bool:
    """Whether a SageMaker instance type (`ml.g5.xlarge`) stores on local NVMe (hardware-encrypted)."""
    parts = instance_type.split(".")
    return len(parts) == 3 and parts[0] == "ml" and parts[1] in _LOCAL_NVME_FAMILIES
