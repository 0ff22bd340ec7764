"""Run the Pulumi program offline, under `pulumi.runtime.set_mocks`: no CLI, no credentials.

The mocks record every resource the program registers (type, name, parent, inputs) and fake
the few outputs a provider would compute (names, ARNs, ids, hosts) so the contract can be
built. `stackwise plan`, the policy tests and the contract tests all use `run_offline`.
Runs with `preview=False`: with a preview, unknown outputs would skip every `.apply`.
"""

from __future__ import annotations

import asyncio
import hashlib
import threading
from dataclasses import dataclass, field
from typing import Any

import pulumi
from pulumi.runtime import mocks as _mocks
from pulumi.runtime import rpc as _rpc
from pulumi.runtime import settings as _settings
from pulumi.runtime.stack import run_pulumi_func
from pulumi.runtime.sync_await import _sync_await

from stackwise.contract import StackOutputs

from .cloud import Fake, cloud_of_type
from .config import InfraConfig
from .program import Secrets, build, export

PLAN_SECRET = "offline-placeholder-not-a-key"
"""What a faked call answers for a credential (a registry password, an access token)."""
# A cluster's CA certificate as the clouds answer it (base64 PEM); a placeholder, not a certificate.
FAKE_CA = "LS0tLS1CRUdJTiBDRVJUSUZJQ0FURS0tLS0tCm9mZmxpbmUtcGxhY2Vob2xkZXIKLS0tLS1FTkQgQ0VSVElGSUNBVEUtLS0tLQo="


@dataclass
class RecordedResource:
    """One resource as the engine would receive it (inputs in the engine's camelCase)."""

    type: str
    name: str
    parent: str | None
    inputs: dict[str, Any]
    urn: str
    custom: bool
    state: dict[str, Any] = field(default_factory=dict)
    parent_urn: str | None = None


@dataclass
class OfflineRun:
    stack: str
    config: InfraConfig
    resources: list[RecordedResource]
    outputs: StackOutputs
    exported: dict[str, Any]
    registered_outputs: set[str] = field(default_factory=set)
    """URNs of the resources that called `register_outputs` (every component must)."""


def _name_of(urn: str) -> str | None:
    return urn.rsplit("::", 1)[-1] if urn else None


def _type_of(urn: str) -> str:
    # urn:pulumi:<stack>::<project>::<parent types joined by $>$<type>::<name>
    return urn.split("::")[2].rsplit("$", 1)[-1] if urn.count("::") >= 3 else ""


class _Recorder(pulumi.runtime.Mocks):
    """Mocks that fake provider-computed outputs, the way each cloud would shape them: the cloud
    whose provider a type or token belongs to answers (`InfraCloud.fake_resource`, `fake_call`);
    this class answers for the providers no cloud owns (images, Pinecone, Kubernetes)."""

    def __init__(self, config: InfraConfig):
        self.config = config

    def _fake(self, **fields: str) -> Fake:
        # PLAN_SECRET is read at each call: a test plants its own to prove no output shows it.
        return Fake(config=self.config, secret=PLAN_SECRET, **fields)

    def new_resource(self, args: pulumi.runtime.MockResourceArgs) -> tuple[str, dict]:
        inputs = dict(args.inputs)
        typ, name = args.typ, args.name
        digest = Fake.digest_of(typ, name)
        physical = str(inputs.get("name") or f"{name}-{digest}")
        state: dict[str, Any] = {**inputs, "name": physical}
        cloud = cloud_of_type(typ)
        if cloud is not None:
            return cloud.fake_resource(typ, inputs, state, self._fake(name=name, physical=physical, digest=digest)), state
        if typ == "docker-build:index:Image":
            # What a push reports: the manifest digest, and the first tag pinned to it.
            state["digest"] = "sha256:" + hashlib.sha256(f"{typ}/{name}".encode()).hexdigest()
            tags = inputs.get("tags") or []
            state["ref"] = f"{tags[0]}@{state['digest']}" if tags else ""
            return f"{physical}-id", state
        if typ == "pinecone:index/index:Index":
            state["host"] = f"{physical}-{digest}.svc.pinecone.io"
        return f"{physical}-id", state

    def call(self, args: pulumi.runtime.MockCallArgs) -> tuple[dict, list]:
        cloud = cloud_of_type(args.token)
        answer = cloud.fake_call(args.token, dict(args.args or {}), self._fake()) if cloud is not None else None
        return answer or {}, []


class _Monitor(_mocks.MockMonitor):
    """The mock monitor, also keeping each registration's parent and kind (custom or component)."""

    def __init__(self, mocks: _Recorder):
        super().__init__(mocks)
        self.recorded: list[RecordedResource] = []
        self.registered_outputs: set[str] = set()

    @staticmethod
    def _close_thread_loop() -> None:
        # The mock monitor answers in the event loop's executor threads and gives each call's
        # thread an event loop of its own, which nothing closes: left open, they are collected
        # half torn down at exit ("Exception ignored in BaseEventLoop.__del__"). Close it here;
        # the thread's next call makes a new one.
        if threading.current_thread() is threading.main_thread():
            return
        policy = asyncio.get_event_loop_policy()
        try:
            loop = policy.get_event_loop()
        except RuntimeError:
            return
        if not loop.is_running():
            loop.close()
            policy.set_event_loop(None)

    def Invoke(self, request):  # noqa: N802 - the gRPC method name
        try:
            return super().Invoke(request)
        finally:
            self._close_thread_loop()

    def ReadResource(self, request):  # noqa: N802 - the gRPC method name
        try:
            return super().ReadResource(request)
        finally:
            self._close_thread_loop()

    def RegisterResourceOutputs(self, request):  # noqa: N802 - the gRPC method name
        self.registered_outputs.add(request.urn)
        return super().RegisterResourceOutputs(request)

    def RegisterResource(self, request):  # noqa: N802 - the gRPC method name
        try:
            response = super().RegisterResource(request)
            if request.type != "pulumi:pulumi:Stack":
                self._record(request, response)
            return response
        finally:
            self._close_thread_loop()

    def _record(self, request, response) -> None:
        registration = self.resources[response.urn]
        parent = None if _type_of(request.parent) in ("", "pulumi:pulumi:Stack") else _name_of(request.parent)
        self.recorded.append(RecordedResource(
            type=request.type, name=request.name, parent=parent,
            inputs=_plain(_rpc.deserialize_properties(request.object)),
            urn=response.urn, custom=bool(request.custom), state=_plain(registration.state),
            parent_urn=None if parent is None else request.parent))


def _tree_order(resources: list[RecordedResource]) -> list[RecordedResource]:
    """Each parent followed by its children, siblings by name: the same order on every run.

    Registrations reach the monitor from a thread pool, so their arrival order varies.
    """
    children: dict[str | None, list[RecordedResource]] = {}
    for r in resources:
        children.setdefault(r.parent_urn, []).append(r)
    ordered: list[RecordedResource] = []

    def walk(parent: str | None) -> None:
        for r in sorted(children.get(parent, []), key=lambda r: (r.name, r.type)):
            ordered.append(r)
            walk(r.urn)

    walk(None)
    seen = {id(r) for r in ordered}
    return ordered + [r for r in resources if id(r) not in seen]  # parents never recorded (none expected)


def _plain(value: Any) -> Any:
    """Numbers the engine sent as floats become ints where whole (the wire has only doubles)."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items() if not str(k).startswith("__")}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def run_offline(config: InfraConfig, stack: str, secrets: Secrets | None = None) -> OfflineRun:
    """Build the program for `config` under mocks; return what it registered and exported.

    Raises whatever the program raises (a ConfigError for bad config, a ValidationError when
    the exported outputs break the contract).
    """
    if secrets is None:
        needs_key = config.vector_store.kind == "pinecone"
        secrets = Secrets(pinecone_api_key=pulumi.Output.secret(PLAN_SECRET) if needs_key else None)
    chosen = secrets

    def program() -> None:
        export(build(config, chosen))

    return _run(config, stack, program)


def run_entrypoint(stack: str, raw_config: dict[str, Any], secret_config: dict[str, str] | None = None) -> OfflineRun:
    """Run `infra/__main__.py` itself, as `pulumi up` would, with the stack file's config.

    `raw_config` holds the stack file's `stackwise:` keys (namespace stripped); structured
    values are handed over JSON-encoded, as the Pulumi engine does.
    """
    import json
    import runpy
    from pathlib import Path

    config = InfraConfig.load(raw_config, f"stacks/Pulumi.{stack}.yaml")
    engine_config = {f"stackwise:{k}": v if isinstance(v, str) else json.dumps(v) for k, v in raw_config.items()}
    engine_config.update(secret_config or {})
    main = Path(__file__).with_name("__main__.py")

    def program() -> None:
        runpy.run_path(str(main), run_name="__main__")

    return _run(config, stack, program, engine_config)


def _run(config: InfraConfig, stack: str, program, engine_config: dict[str, str] | None = None) -> OfflineRun:
    recorder = _Recorder(config)
    monitor = _Monitor(recorder)
    _settings.ROOT.set(None)  # a fresh root Stack resource for every run
    engine_config = engine_config or {}
    pulumi.runtime.set_all_config(engine_config, [k for k in engine_config if not k.startswith("stackwise:")])
    pulumi.runtime.set_mocks(recorder, project="stackwise", stack=stack, preview=False, monitor=monitor)
    _settings.SETTINGS.rpc_manager.clear()
    _settings.SETTINGS.outputs.clear()
    _sync_await(run_pulumi_func(program))
    root = _settings.get_root_resource()
    assert root is not None
    exported = {k: _sync_await(pulumi.Output.from_input(v).future())
                for k, v in root.outputs.items()}  # type: ignore[attr-defined]
    return OfflineRun(stack=stack, config=config, resources=_tree_order(monitor.recorded),
                      outputs=StackOutputs.model_validate(exported), exported=exported,
                      registered_outputs=set(monitor.registered_outputs))
