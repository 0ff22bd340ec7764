"""Build the training and serving images (the repository's `Containerfile`) with podman or Docker.

    from stackwise.images import build_images
    build_images("localhost/stackwise", "localhost/stackwise-base:bookworm", Path("wheels"),
                 "local,train,eval,serve,curate,runtime,pinecone,weaviate,milvus")
    -> {"train": {"image": "localhost/stackwise/train:3f2a...", "digest": "3f2a...", "id": "...",
                  "size_bytes": ..., "seconds": ..., "cached": False}, "serve": {...}}

Images are tagged by a content digest (`content_digest`): a hash of the Containerfile, the
stackwise sources copied into the image, the wheelhouse's file names, the base image and the
build arguments. The same inputs give the same tag, so a build whose tag exists is skipped (a
cache hit costs one `image inspect`), and a job names an image that says what it contains.

The Python packages come only from a wheelhouse (`scripts/wheelhouse.sh OUTDIR`), passed as the
named build context `wheels`; the base image comes from the caller (`scripts/base-image.sh` makes a
local Debian one without a registry). Nothing here passes engine- or machine-specific flags:
podman reads its configuration from `CONTAINERS_CONF` (scripts/containers.conf for sandboxes with
hybrid cgroups or no rlimit changes).

Only the standard library is imported here.

Over ~400 lines on purpose: the build (base image, wheelhouse, content digest, build, push, login)
is one sequence whose steps share the digest and the engine's handling.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterable, Mapping
from pathlib import Path

from .errors import ConfigError, StackwiseError

ENGINES = ("podman", "docker")
ENV_ENGINE = "STACKWISE_CONTAINER_ENGINE"
TARGETS = ("train", "serve")
DEFAULT_EXTRAS = "local,train,eval,serve,curate,runtime,pinecone,weaviate,milvus"
DEFAULT_BASE_IMAGE = "docker.io/library/python:3.11-slim-bookworm"
LOCAL_BASE_IMAGE = "localhost/stackwise-base:bookworm"
LOCAL_REPOSITORY = "localhost/stackwise"
CONTAINERFILE = "Containerfile"
# What the Containerfile copies from the build context (the allowlist in .containerignore).
CONTEXT_PATHS = (CONTAINERFILE, ".containerignore", "pyproject.toml", "README.md", "sdk", "adapters", "infra",
                 "scripts/image")
DIGEST_LENGTH = 16
BUILD_INFO = "scripts/image/build-info.json"  # in the image: /opt/stackwise/build-info.json
LOG_LINES = 20
INSTALL_HINT = ("install podman (Debian/Ubuntu: `apt-get install -y podman runc`; other systems: "
                "https://podman.io/docs/installation) or Docker (https://docs.docker.com/engine/install/) and "
                "start its daemon; or name one with $STACKWISE_CONTAINER_ENGINE")


# -- the engine ----------------------------------------------------------------------------------
def _docker_daemon_error(docker: str) -> str | None:
    """None when `docker info` reaches a daemon, else why not (first lines of its error)."""
    try:
        proc = subprocess.run([docker, "info", "--format", "{{.ServerVersion}}"], capture_output=True, text=True,
                              timeout=20, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return str(exc)
    if proc.returncode == 0 and proc.stdout.strip():
        return None
    lines = [x for x in (proc.stderr or proc.stdout).strip().splitlines() if x.strip()]
    return " / ".join(lines[-2:]) or f"exit status {proc.returncode}"


def find_engine() -> str:
    """"podman" or "docker": `$STACKWISE_CONTAINER_ENGINE` if set, else podman if on PATH, else a
    docker whose daemon answers. A docker client without a reachable daemon counts as absent.

    Raises ConfigError naming both engines and how to install them.
    """
    wanted = os.environ.get(ENV_ENGINE, "").strip()
    if wanted:
        if wanted not in ENGINES:
            raise ConfigError(f"unknown container engine {wanted!r}", where=f"${ENV_ENGINE}",
                              fix=f"set it to one of {', '.join(ENGINES)}, or unset it")
        path = shutil.which(wanted)
        if not path:
            raise ConfigError(f"container engine {wanted!r} is not on PATH", where=f"${ENV_ENGINE}",
                              fix=INSTALL_HINT)
        if wanted == "docker":
            problem = _docker_daemon_error(path)
            if problem:
                raise ConfigError(f"docker is installed ({path}) but its daemon is not reachable: {problem}",
                                  where=f"${ENV_ENGINE}", fix="start the Docker daemon (or set DOCKER_HOST), "
                                  "or use podman, which needs no daemon")
        return wanted
    if shutil.which("podman"):
        return "podman"
    docker = shutil.which("docker")
    if docker:
        problem = _docker_daemon_error(docker)
        if problem is None:
            return "docker"
        raise ConfigError("no usable container engine: podman is not installed, and docker "
                          f"({docker}) is only a client: its daemon is not reachable ({problem})",
                          where="PATH", fix=INSTALL_HINT)
    raise ConfigError("no container engine: neither podman nor docker is on PATH", where="PATH", fix=INSTALL_HINT)


def _run(cmd: list[str], timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def image_exists(engine: str, image: str) -> bool:
    return _run([engine, "image", "inspect", image]).returncode == 0


def inspect_image(engine: str, image: str) -> dict:
    """{"id": ..., "size_bytes": ...} of a local image."""
    proc = _run([engine, "image", "inspect", "--format", "{{.Id}} {{.Size}}", image])
    if proc.returncode != 0:
        raise StackwiseError(f"{engine} cannot inspect image {image}: {proc.stderr.strip()[-500:]}")
    image_id, _, size = proc.stdout.strip().partition(" ")
    return {"id": image_id.removeprefix("sha256:"), "size_bytes": int(float(size or 0))}


# -- names ---------------------------------------------------------------------------------------
def image_repository(stack: object | None) -> str:
    """Where `build_images` tags the images for a stack: its training image's repository.

    The training image reference loses its tag or digest, and its last path component when
    that is a target name (`.../train:latest` -> `...`): `<repository>/train:<digest>` then sits
    beside it. The local stack (or none) without a training image: `localhost/stackwise`.
    """
    outputs = getattr(stack, "outputs", None)
    image = getattr(outputs, "training_image", None) if outputs is not None else None
    if not image:
        if stack is None or getattr(stack, "is_local", False):
            return LOCAL_REPOSITORY
        name = getattr(stack, "name", "?")
        raise ConfigError(f"stack {name!r} outputs have no training_image, so there is no registry to tag and push "
                          "the images to", where="stack outputs: training_image",
                          fix="run `pulumi up` and `stackwise sync` for the stack (the program exports it), "
                              "or pass --repository REGISTRY/PATH")
    ref = image.split("@", 1)[0]
    head, _, last = ref.rpartition("/")
    if ":" in last:  # a tag (a ':' before the last '/' is a registry port)
        last = last.split(":", 1)[0]
    ref = f"{head}/{last}" if head else last
    head, _, last = ref.rpartition("/")
    return head if head and last in TARGETS else ref


# -- inputs: the base image and the wheelhouse -------------------------------------------------
def repo_root() -> Path:
    """The checkout this module runs from (sdk/ -> the repository root), where the Containerfile is."""
    return Path(__file__).resolve().parent.parent


def _script(name: str, args: list[str], what: str, timeout: float, env: Mapping[str, str] | None = None) -> None:
    script = repo_root() / "scripts" / name
    if not script.is_file():
        raise ConfigError(f"{what} needs scripts/{name}, which this installation lacks", where=str(script),
                          fix="run it from a checkout of the stackwise repository")
    log = Path(tempfile.gettempdir()) / f"stackwise-{name.removesuffix('.sh')}.log"
    _run_logged(["bash", str(script), *args], log, what, timeout, {**os.environ, **dict(env or {})})


def default_cache() -> Path:
    """$STACKWISE_IMAGE_CACHE, else ~/.cache/stackwise/images (the base image's root filesystem)."""
    return Path(os.environ.get("STACKWISE_IMAGE_CACHE") or "~/.cache/stackwise/images").expanduser()


def make_base_image(image: str = LOCAL_BASE_IMAGE, engine: str | None = None, timeout: float = 1800) -> str:
    """The local Debian bookworm base image, made without a registry (scripts/base-image.sh:
    debootstrap, then `import`; needs root and debootstrap). Cached: returns at once when it exists."""
    engine = engine or find_engine()
    if not image_exists(engine, image):
        _script("base-image.sh", [image], f"making the base image {image}", timeout,
                {"STACKWISE_CONTAINER_ENGINE": engine})
    return image


def make_wheelhouse(extras: str = DEFAULT_EXTRAS, folder: Path | None = None, python: str | None = None,
                    timeout: float = 3600) -> Path:
    """The wheelhouse for `extras` (scripts/wheelhouse.sh, pinned to the packages of `python`, by
    default this interpreter), in `folder` (default $STACKWISE_WHEELHOUSE, else
    ~/.cache/stackwise/wheels). Cached: a current one only gets a fresh stackwise wheel (seconds);
    other extras remake it (quick: pip's cache keeps the downloads)."""
    import sys

    folder = Path(folder or os.environ.get("STACKWISE_WHEELHOUSE") or "~/.cache/stackwise/wheels").expanduser()
    _script("wheelhouse.sh", [str(folder), extras], f"making the wheelhouse {folder}", timeout,
            {"PYTHON": python or sys.executable})
    return folder


# -- the content digest --------------------------------------------------------------------------


def _context_items(root: Path):
    """(relative path, file) of what the Containerfile copies from the repository."""
    for rel in CONTEXT_PATHS:
        path = root / rel
        if path.is_file():
            yield rel, path
        elif path.is_dir():
            for item in sorted(path.rglob("*")):
                parts = item.relative_to(root).parts
                if item.is_file() and "__pycache__" not in parts and item.suffix != ".pyc":
                    yield item.relative_to(root).as_posix(), item


def stage_context(root: Path, into: Path) -> Path:
    """Copy the build context (CONTEXT_PATHS, about 1 MB) into `into`: the build and its digest
    then see the same files even while someone edits the checkout."""
    for rel, path in _context_items(Path(root)):
        target = into / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, target)
    return into


def context_files(root: Path, wheelhouse: Path) -> dict[str, Path]:
    """The files an image build reads, by the name the digest uses: `context/<path>` for what the
    Containerfile copies from the repository, `wheels/<name>` for the wheelhouse."""
    root, wheelhouse = Path(root), Path(wheelhouse)
    files = {f"context/{rel}": path for rel, path in _context_items(root)}
    for item in sorted(wheelhouse.iterdir()) if wheelhouse.is_dir() else ():
        # stackwise's own wheel is not installed (the image builds stackwise from the context).
        if item.is_file() and not item.name.startswith(".") and not item.name.startswith("stackwise-"):
            files[f"wheels/{item.name}"] = item
    return files


def content_digest(context_files: Mapping[str, Path] | Iterable[Path | str], build_args: Mapping[str, str],
                   length: int = DIGEST_LENGTH) -> str:
    """sha256 over the build's inputs, `length` hex characters.

    `context_files`: name -> path (as `context_files()` returns), or paths (named as given).
    Wheels count by name and size (the name carries the version; reading a GB of wheels would
    cost more than the build check saves); every other file by its content. `build_args` are
    the build arguments and anything else that decides the image (the base image's id).
    """
    if isinstance(context_files, Mapping):
        items = [(str(name), Path(path)) for name, path in context_files.items()]
    else:
        items = [(str(path), Path(path)) for path in context_files]
    digest = hashlib.sha256()
    for name, path in sorted(items):
        digest.update(name.encode() + b"\0")
        if path.suffix == ".whl":
            digest.update(f"size={path.stat().st_size}".encode())
        else:
            digest.update(hashlib.sha256(path.read_bytes()).digest())
        digest.update(b"\n")
    for key in sorted(build_args):
        digest.update(f"arg {key}={build_args[key]}\n".encode())
    return digest.hexdigest()[:length]


# -- building ------------------------------------------------------------------------------------
def _tail(path: Path, lines: int = LOG_LINES) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""
    return "\n".join(text.rstrip().splitlines()[-lines:])


BUILD_FIX = ("see the log; a missing wheel means the wheelhouse does not match the extras "
             "(rerun scripts/wheelhouse.sh OUTDIR EXTRAS)")


def _run_logged(cmd: list[str], log: Path, what: str, timeout: float, env: Mapping[str, str] | None = None,
                fix: str = BUILD_FIX) -> None:
    with open(log, "wb") as out:
        out.write(("$ " + " ".join(cmd) + "\n").encode())
        out.flush()
        try:
            proc = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                  timeout=timeout, env=None if env is None else dict(env))
        except subprocess.TimeoutExpired:
            raise StackwiseError(f"{what} took longer than {timeout:.0f} s; last lines:\n{_tail(log)}",
                                 where=str(log)) from None
    if proc.returncode != 0:
        raise StackwiseError(f"{what} failed (exit status {proc.returncode}); last {LOG_LINES} lines:\n{_tail(log)}",
                             where=f"full log: {log}", fix=fix)


def image_reference(repository: str, target: str, tag: str | None) -> str:
    """Where a target's image goes: `<repository>/<target>:<tag>` (`:latest` without a tag), except on
    ECR, which holds one image name per repository (the stack's one repository): there the target is
    part of the tag, `<repository>:<target>-<tag>`, and `<repository>:<target>` follows the last
    build, the tags `pulumi up` pushes too (infra/images.py)."""
    from .registry_login import _ECR

    if _ECR.fullmatch(repository.split("/", 1)[0]):
        return f"{repository}:{target}-{tag}" if tag else f"{repository}:{target}"
    return f"{repository}/{target}:{tag or 'latest'}"


def build_images(repository: str, base_image: str, wheelhouse: Path, extras: str = DEFAULT_EXTRAS,
                 engine: str | None = None, push: bool = False, *, root: Path | None = None,
                 build_args: Mapping[str, str] | None = None, timeout: float = 3600, cloud: str | None = None) -> dict:
    """Build the `train` and `serve` targets of the Containerfile, each tagged
    `<repository>/<target>:<digest>` (and `:latest`), skipping a target whose tag exists.

    `wheelhouse`: the folder scripts/wheelhouse.sh made for `extras`. `build_args`: more build
    arguments (HF_HUB_OFFLINE, IMAGE_USER, VERSION, ...). `push`: log the engine in to
    `repository`'s registry with the cloud's own credential (`stackwise.registry_login`; `cloud`
    is the stack's, else the registry host decides; other registries need your own login) before
    anything is built, then push the digest tags. Returns, per target, the image reference,
    digest, image id, size in bytes, build seconds, whether it was a cache hit and, when pushed,
    `pushed_image`: the digest-pinned reference in the registry (`<repository>/<target>@sha256:...`).
    """
    engine = engine or find_engine()
    root = Path(root) if root else repo_root()
    wheelhouse = Path(wheelhouse).expanduser().resolve()
    containerfile = root / CONTAINERFILE
    if not containerfile.is_file():
        raise ConfigError(f"no {CONTAINERFILE} in {root}", where=str(root),
                          fix="build images from a checkout of the stackwise repository (or pass root=)")
    if not (wheelhouse / "requirements.txt").is_file():
        raise ConfigError(f"{wheelhouse} is not a wheelhouse (it has no requirements.txt)", where=str(wheelhouse),
                          fix=f"make it with: scripts/wheelhouse.sh {wheelhouse} {extras}")
    repository = repository.rstrip("/")
    if push:  # no credentials: fail now, not after a build of several minutes
        from .registry_login import login, registry_host

        host = registry_host(repository)
        if host:
            login(engine, host, cloud)
    args = {"BASE_IMAGE": base_image, "EXTRAS": extras, **dict(build_args or {})}
    identity = dict(args)
    if image_exists(engine, base_image):  # a rebuilt base image changes the digest too
        identity["base_image_id"] = inspect_image(engine, base_image)["id"]
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="stackwise-context-") as tmp:
        context = stage_context(root, Path(tmp))
        digest = content_digest(context_files(context, wheelhouse), identity)
        # Written after the digest is taken; the Containerfile copies it ahead of every instruction
        # that expands a build argument, so those layers are never reused from another build.
        (context / BUILD_INFO).parent.mkdir(parents=True, exist_ok=True)
        (context / BUILD_INFO).write_text(json.dumps({"content_digest": digest, "build_args": args},
                                                     sort_keys=True) + "\n", encoding="utf-8")
        for target in TARGETS:
            image = image_reference(repository, target, digest)
            started = time.monotonic()
            cached = image_exists(engine, image)
            if not cached:
                log = Path(tempfile.gettempdir()) / f"stackwise-build-{target}-{digest}.log"
                cmd = [engine, "build", "--file", str(context / CONTAINERFILE), "--target", target,
                       "--build-context", f"wheels={wheelhouse}",
                       "--tag", image, "--tag", image_reference(repository, target, None)]
                env = None
                if engine == "podman":
                    # Docker's manifest format: what every cloud registry and runtime accepts.
                    cmd += ["--format", "docker"]
                else:
                    env = {**os.environ, "DOCKER_BUILDKIT": "1"}  # named build contexts need BuildKit
                # STACKWISE_DIGEST becomes the label io.stackwise.content-digest. Neither it nor
                # --label busts buildah 1.28's layer cache; the copied build-info.json above does.
                for key, value in sorted({**args, "STACKWISE_DIGEST": digest}.items()):
                    cmd += ["--build-arg", f"{key}={value}"]
                cmd.append(str(context))
                _run_logged(cmd, log, f"{engine} build of the {target} image ({image})", timeout, env)
            else:  # `:latest` follows the last build asked for, cached or not
                _run([engine, "tag", image, image_reference(repository, target, None)])
            info = inspect_image(engine, image)
            results[target] = {"image": image, "digest": digest, "id": info["id"], "size_bytes": info["size_bytes"],
                               "seconds": round(time.monotonic() - started, 2), "cached": cached}
    if push:
        for result in results.values():
            result["pushed_image"] = push_image(engine, result["image"], timeout)
            result["pushed"] = True
    return results


def push_image(engine: str, image: str, timeout: float = 3600) -> str:
    """Push a local `image` (`host/path:tag`, already logged in) and return its digest-pinned
    reference in the registry, `host/path@sha256:...`. `$STACKWISE_REGISTRY_HOST` (tests,
    mirrors) sends it to that host instead, under the same path.

    The digest is the manifest the registry stored: podman writes it with `--digestfile`
    (`image inspect {{.Digest}}` would give the local manifest's, which differs once podman
    recompresses layers for the push); docker prints it as `<tag>: digest: sha256:... size: N`.
    Raises StackwiseError with the engine's last lines when the registry refuses the push.
    """
    from .registry_login import redirected

    dest = redirected(image)
    if dest != image:
        proc = _run([engine, "tag", image, dest])
        if proc.returncode != 0:
            raise StackwiseError(f"{engine} tag {image} {dest} failed: {proc.stderr.strip()[-500:]}")
    name = dest.rsplit("@", 1)[0]
    if ":" in name.rpartition("/")[2]:
        name = name.rsplit(":", 1)[0]
    safe = "".join(c if c.isalnum() else "-" for c in dest)[-80:]
    log = Path(tempfile.gettempdir()) / f"stackwise-push-{safe}.log"
    with tempfile.TemporaryDirectory(prefix="stackwise-push-") as tmp:
        digestfile = Path(tmp) / "digest"
        cmd = [engine, "push"] + (["--digestfile", str(digestfile)] if engine == "podman" else []) + [dest]
        _run_logged(cmd, log, f"{engine} push of {dest}", timeout,
                    fix="the registry refused the push: check the login (`stackwise image build --push` logs in with "
                        "the stack's cloud credential; other registries need `<engine> login`), the identity's push "
                        "rights, and that the repository exists (ECR needs one repository per image name)")
        digest = digestfile.read_text().strip() if digestfile.is_file() else ""
    if not digest.startswith("sha256:"):
        digest = _pushed_digest(_tail(log, 1000)) or _repo_digest(engine, dest, name)
    if not digest:
        raise StackwiseError(f"{engine} pushed {dest} but reported no digest", where=f"full log: {log}")
    return f"{name}@{digest}"


def _pushed_digest(text: str) -> str:
    import re

    found = re.findall(r"digest: (sha256:[0-9a-f]{64})", text)
    return found[-1] if found else ""


def _repo_digest(engine: str, image: str, name: str) -> str:
    proc = _run([engine, "image", "inspect", "--format", "{{json .RepoDigests}}", image])
    try:
        digests = json.loads(proc.stdout) if proc.returncode == 0 else []
    except ValueError:
        return ""
    for ref in digests or []:
        if ref.startswith(name + "@"):
            return ref.split("@", 1)[1]
    return ""


if __name__ == "__main__":  # python -m stackwise.images REPOSITORY BASE_IMAGE WHEELHOUSE [EXTRAS]
    import sys

    if len(sys.argv) not in (4, 5):
        print("usage: python -m stackwise.images REPOSITORY BASE_IMAGE WHEELHOUSE [EXTRAS]", file=sys.stderr)
        raise SystemExit(2)
    try:
        print(json.dumps(build_images(sys.argv[1], sys.argv[2], Path(sys.argv[3]), *sys.argv[4:5]), indent=2))
    except StackwiseError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(exc.exit_code) from None
