"""`stackwise image build`: the training and serving images, tagged by content digest."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from .common import JsonOpt, StackOpt, connect
from .render import get_console, print_json


image_app = typer.Typer(help="Build (and push) the training and serving images every job and endpoint runs.",
                        no_args_is_help=True)


@image_app.command("build")
def image_build(
    stack: StackOpt = None,
    base_image: Annotated[Optional[str], typer.Option("--base-image", help="Base image (default: python:3.11-slim-bookworm; "
                                                      "scripts/base-image.sh makes localhost/stackwise-base:bookworm without a registry).")] = None,
    wheelhouse: Annotated[Optional[str], typer.Option("--wheelhouse", help="Wheelhouse folder (default: made with "
                                                      "scripts/wheelhouse.sh under ~/.cache/stackwise/wheels).")] = None,
    extras: Annotated[Optional[str], typer.Option("--extras", help="stackwise extras installed in the images.")] = None,
    repository: Annotated[Optional[str], typer.Option("--repository", help="Where to tag the images: "
                                                      "<repository>/train:<digest> (default: from the stack's training_image, "
                                                      "or localhost/stackwise).")] = None,
    push: Annotated[bool, typer.Option("--push", help="Log in to the repository's registry with the cloud's own "
                                       "credential (ECR, Artifact Registry, ACR; others: log in yourself) and push both "
                                       "images; prints their digest-pinned references.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Build the training and serving images from this checkout with podman or docker, tagged by
    content digest (a rebuild of the same inputs is a cache hit)."""
    from pathlib import Path

    from ..images import DEFAULT_BASE_IMAGE, DEFAULT_EXTRAS, build_images, image_repository, make_wheelhouse

    chosen_extras = extras or DEFAULT_EXTRAS
    cloud = None  # --repository: the registry host's pattern says which cloud's login it takes
    if repository:
        repo = repository
    else:
        chosen = connect(stack).stack
        repo, cloud = image_repository(chosen), getattr(chosen, "cloud", None)
    wheels = Path(wheelhouse).expanduser() if wheelhouse else make_wheelhouse(chosen_extras)
    result = build_images(repo, base_image or DEFAULT_BASE_IMAGE, wheels, chosen_extras, push=push, cloud=cloud)
    if as_json:
        print_json(result)
        return
    console = get_console()
    for target, info in result.items():
        state = "cached" if info["cached"] else f"built in {info['seconds']:.0f} s"
        console.print(f"{target}: {info['image']} ({info['size_bytes'] / 1e9:.2f} GB, {state})", markup=False)
        if info.get("pushed_image"):
            console.print(f"  pushed: {info['pushed_image']}", markup=False)
