"""The clouds stackwise provisions and runs on, declared once.

Everything that lists clouds derives from `CLOUDS`: the stack contract's `cloud` (with the
`local` stack beside them), the compute and deploy adapter tables (`stackwise.registry`), the
Pulumi program's cloud objects and their config keys (`stackwise.infra.cloud`), and the policy
pack. Adding a cloud is one entry here plus its own folders (infra/<cloud>/, its adapters); see
docs/architecture.md.

Plain data: importing this module imports nothing else, so `import stackwise` stays light. The
dotted paths are imported only when a stack of that cloud is used.
"""

from __future__ import annotations

from dataclasses import dataclass

LOCAL = "local"
"""The embedded stack: no cloud, no Pulumi program (README, "Local stack")."""


@dataclass(frozen=True)
class CloudRef:
    """One cloud: where each part of stackwise finds its code for it."""

    name: str
    infra: str
    """`module:attribute` of its Pulumi side, an `stackwise.infra.cloud.InfraCloud` object."""
    extra: str
    """The pip extra that installs its SDKs and Pulumi provider (`pip install 'stackwise[aws]'`)."""
    compute: str
    """`module:Class` of its managed compute adapter (jobs on the cloud's ML service)."""
    deploy: str
    """`module:Class` of its managed deploy adapter (the cloud's online endpoints)."""
    artifact_scheme: str
    """The URI scheme of its artifact store (`s3` for `s3://bucket/...`)."""


CLOUDS: dict[str, CloudRef] = {
    "aws": CloudRef("aws", infra="stackwise.infra.aws:CLOUD", extra="aws",
                    compute="stackwise.adapters.compute.sagemaker:SageMakerCompute",
                    deploy="stackwise.adapters.deploy.sagemaker:SageMakerDeploy", artifact_scheme="s3"),
    "gcp": CloudRef("gcp", infra="stackwise.infra.gcp:CLOUD", extra="gcp",
                    compute="stackwise.adapters.compute.vertex:VertexCompute",
                    deploy="stackwise.adapters.deploy.vertex:VertexDeploy", artifact_scheme="gs"),
    "azure": CloudRef("azure", infra="stackwise.infra.azure:CLOUD", extra="azure",
                      compute="stackwise.adapters.compute.azureml:AzureMLCompute",
                      deploy="stackwise.adapters.deploy.azureml:AzureMLDeploy", artifact_scheme="az"),
}


def stack_clouds() -> tuple[str, ...]:
    """Every value `stackwise:cloud` may take: `local`, then each cloud of `CLOUDS` (read now, so
    an entry added at run time, as the tests' fake cloud is, counts)."""
    return (LOCAL, *CLOUDS)


def one_of(names: tuple[str, ...] | list[str], quoted: bool = True) -> str:
    """`'a', 'b' or 'c'`: how messages list the allowed values (as pydantic lists a Literal's)."""
    shown = [repr(n) if quoted else n for n in names]
    return shown[0] if len(shown) == 1 else f"{', '.join(shown[:-1])} or {shown[-1]}"
