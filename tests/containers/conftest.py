"""Fixtures of the container tests: the training and serving images built from this checkout.

`engine` (session): the container engine command, `["podman"]` or `["docker"]`
(stackwise.images.find_engine). With podman and no `CONTAINERS_CONF` set, it points podman at
scripts/containers.conf (cgroupfs, runc, no default ulimits: what this kind of sandbox needs) for the
whole session, so every podman this process starts, the tests' own included, reads it.

`images` (session): the dict `stackwise.images.build_images` returns ({"train": {"image", "digest",
"id", "size_bytes", "seconds", "cached"}, "serve": {...}}), after making, each cached:
- the base image localhost/stackwise-base:bookworm (scripts/base-image.sh: debootstrap; about a
  minute the first time on a machine, seconds from the cached root filesystem tarball);
- the wheelhouse (scripts/wheelhouse.sh into $STACKWISE_WHEELHOUSE, default ~/.cache/stackwise/wheels,
  the folder `stackwise image build` uses too: about 40 s cold, 2 s warm);
- both images, tagged by content digest: about 5 minutes cold, ~25 s after a source change, under
  a second when nothing changed.
The build is paid once per session; each test then runs containers only.

Without a container engine (or without root and debootstrap for the base image) the tests skip,
saying why, unless STACKWISE_REQUIRE_CONTAINERS=1 (CI), which makes that a failure.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
REPOSITORY = "localhost/stackwise"
# A cold session builds the base image, the wheelhouse and both images inside the first test's
# time (about 7 minutes on 2 cores); the tests of this folder get this much unless they say more.
SESSION_TIMEOUT_S = 2400


def pytest_collection_modifyitems(config, items):
    for item in items:
        if Path(str(item.fspath)).resolve().is_relative_to(HERE) and item.get_closest_marker("timeout") is None:
            item.add_marker(pytest.mark.timeout(SESSION_TIMEOUT_S))


def _unavailable(reason: str) -> None:
    if os.environ.get("STACKWISE_REQUIRE_CONTAINERS") == "1":
        pytest.fail(f"{reason} (STACKWISE_REQUIRE_CONTAINERS=1 requires the container tests to run)", pytrace=False)
    pytest.skip(reason)


def _cache() -> Path:
    return Path(os.environ.get("STACKWISE_IMAGE_CACHE") or "~/.cache/stackwise/images").expanduser()


@pytest.fixture(scope="session")
def engine() -> list[str]:
    from stackwise.errors import ConfigError
    from stackwise.images import find_engine

    try:
        name = find_engine()
    except ConfigError as exc:
        _unavailable(f"no container engine: {exc.what}")
    if name == "podman" and not os.environ.get("CONTAINERS_CONF") and shutil.which("runc"):
        os.environ["CONTAINERS_CONF"] = str(ROOT / "scripts" / "containers.conf")
    return [name]


@pytest.fixture(scope="session")
def images(engine) -> dict:
    from stackwise.errors import StackwiseError
    from stackwise.images import DEFAULT_EXTRAS, LOCAL_BASE_IMAGE, build_images, image_exists, make_base_image, \
        make_wheelhouse

    if not image_exists(engine[0], LOCAL_BASE_IMAGE):
        if os.geteuid() != 0 or not shutil.which("debootstrap"):
            _unavailable(f"the base image {LOCAL_BASE_IMAGE} is missing and making it needs root and debootstrap "
                         "(apt-get install -y debootstrap; scripts/base-image.sh)")
    cache = _cache()
    try:
        make_base_image(LOCAL_BASE_IMAGE, engine=engine[0])
        wheelhouse = make_wheelhouse(DEFAULT_EXTRAS, python=sys.executable)  # shared with `stackwise image build`
        built = build_images(REPOSITORY, LOCAL_BASE_IMAGE, wheelhouse, DEFAULT_EXTRAS, engine=engine[0],
                             build_args={"HF_HUB_OFFLINE": "1"})
    except StackwiseError as exc:
        pytest.fail(f"building the images failed:\n{exc}", pytrace=False)
    (cache / "images.json").write_text(json.dumps(built, indent=2), encoding="utf-8")  # for CI's log
    return built
