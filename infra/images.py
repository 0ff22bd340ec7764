"""The training and serving images, built and pushed by `pulumi up` (pulumi-docker-build).

Each cloud's `TrainingPlatform` calls `build_images` with its registry: the images are its
children, tagged in the stack's own registry, pushed with credentials taken from that
registry's Pulumi outputs, and exported digest-pinned (`<image>@sha256:...`), so a job or an
endpoint runs exactly the image this `pulumi up` built. The Containerfile, build arguments and
named build context `wheels` are the ones `stackwise image build` uses (stackwise.images).

Off with `stackwise:images: {build: false}` (the images then come from `stackwise image build
--push`, and the outputs name tags). `pulumi up` needs Docker with BuildKit where it runs; under
mocks (`stackwise plan`, the tests) nothing is built.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import pulumi

TARGETS = ("train", "serve")


@dataclass(frozen=True)
class ImageBuildArgs:
    context: str
    """The repository root: the Containerfile and what it copies (the build context)."""
    wheelhouse: str
    """The wheelhouse folder (scripts/wheelhouse.sh), given to the build as the named context `wheels`."""
    base_image: str
    """BASE_IMAGE build argument: the image the runtime stage starts from."""
    extras: str
    """EXTRAS build argument: the stackwise extras installed in both images."""
    platform: str = "linux/amd64"
    """The platform built for (what SageMaker, Vertex and Azure ML run)."""


@dataclass(frozen=True)
class RegistryLogin:
    """Where the images are pushed and with which credential (Pulumi outputs of the registry)."""

    address: pulumi.Input[str]
    username: pulumi.Input[str] | None = None
    password: pulumi.Input[str] | None = None
    """Made secret here; None: the docker credentials of the machine running `pulumi up`."""


def _untagged(ref: str) -> str:
    """`host/path:tag` -> `host/path` (a ':' before the last '/' is a registry port)."""
    head, _, last = ref.rpartition("/")
    return f"{head}/{last.split(':', 1)[0]}" if head else last.split(":", 1)[0]


def build_images(name: str, args: ImageBuildArgs, refs: dict[str, pulumi.Input[str]], login: RegistryLogin,
                 parent: pulumi.Resource) -> tuple[dict[str, pulumi.Resource], dict[str, pulumi.Output[str]]]:
    """One `docker-build:index:Image` per target in `refs` (target -> tagged reference to push),
    children of `parent`. Returns the Image resources and, per target, the digest-pinned
    reference `<image name>@<digest>`."""
    import pulumi_docker_build as docker_build

    registries = None  # no credential of the registry's own: the docker login of the machine running `pulumi up`
    if login.password is not None:
        registries = [docker_build.RegistryArgs(address=login.address, username=login.username,
                                                password=pulumi.Output.secret(login.password))]
    context = docker_build.BuildContextArgs(
        location=args.context,
        named={"wheels": docker_build.ContextArgs(location=os.path.expanduser(args.wheelhouse))})
    images: dict[str, pulumi.Resource] = {}
    pinned: dict[str, pulumi.Output[str]] = {}
    for target, ref in refs.items():
        image = docker_build.Image(
            f"{name}-{target}-image", context=context,
            dockerfile=docker_build.DockerfileArgs(location=os.path.join(args.context, "Containerfile")),
            target=target, build_args={"BASE_IMAGE": args.base_image, "EXTRAS": args.extras},
            platforms=[docker_build.Platform(args.platform)], tags=[ref], push=True, registries=registries,
            build_on_preview=False,  # a multi-GB build only on `pulumi up`, never on a preview
            opts=pulumi.ResourceOptions(parent=parent))
        images[target] = image
        pinned[target] = pulumi.Output.all(ref, image.digest).apply(lambda v: f"{_untagged(v[0])}@{v[1]}")
    return images, pinned
