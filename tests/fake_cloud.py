"""A cloud that exists only in the tests: "add a cloud" done in one module, touching no shared file.

`plugged_in(monkeypatch)` declares it the way a real cloud is declared, one entry in the
registry `stackwise.clouds.CLOUDS`, and gives the GPU catalog its offers (a real cloud adds
them to stackwise/data/gpu_catalog.yaml). Its Pulumi side is `CLOUD`: a small platform, an
endpoint and a budget made of plain `pulumi.CustomResource`s of a made-up provider `fakecloud`,
what the mocks answer for them, how `stackwise plan` prices them, and its policy rules.

Its SDK side is `FakeCompute` and `FakeDeploy`, on the fake cloud's API, a small JSON API over
HTTP (`FakeCloudAPI`, on 127.0.0.1): jobs, built on the shared job base as every cloud's adapter
is (one pure `build`, a few thin calls), and endpoints, whose versions and traffic split the deploy
adapter sets as `DeployBackend` asks. Its object store speaks S3 (moto in the tests).
"""

from __future__ import annotations

import dataclasses
import json
import os
import threading
import urllib.error
import urllib.request
from typing import Any

import pulumi

from stackwise import catalog
from stackwise.adapters.compute.base import (CloudCompute, bootstrap_command, decode_spec, identity_fields,
                                             job_environment, node_count, parse_job_name)
from stackwise.adapters.deploy.base import check_artifact
from stackwise.clouds import CloudRef
from stackwise.deploy import DeployBackend, Deployment, Variant, variant_name
from stackwise.errors import ConfigError, JobNotFoundError, TransientError
from stackwise.jobs import JobInfo, JobState
from stackwise.infra.cloud import ClusterOutputs, Fake, InfraCloud, PlatformOutputs, PolicyRules

NAME = "fake"
PROVIDER = "fakecloud"
REF = CloudRef(NAME, infra=f"{__name__}:CLOUD", extra="fake", compute=f"{__name__}:FakeCompute",
               deploy=f"{__name__}:FakeDeploy", artifact_scheme="fake")
"""Its registry entry: the classes the compute and deploy contracts test through it."""

OFFERS = (
    catalog.Offer(gpu="T4", cloud=NAME, count=1, instance="fake.t4.small", on_demand_hourly=0.5, spot_hourly=0.15,
                  accelerator=None, region="fake-east-1", as_of="2026-12-01", source="made up for the tests",
                  checked={"on_demand": "made up", "spot": "made up"}),
)


class _Resource(pulumi.CustomResource):
    """A resource of the made-up provider: `outputs` are what it computes (the mocks answer them)."""

    def __init__(self, kind: str, name: str, props: dict[str, Any], outputs: tuple[str, ...] = (),
                 opts: pulumi.ResourceOptions | None = None):
        super().__init__(f"{PROVIDER}:{kind}", name, {**props, **dict.fromkeys(outputs)}, opts)


class _Platform(pulumi.ComponentResource):
    def __init__(self, name: str, tags: dict[str, str]):
        super().__init__("stackwise:fake:TrainingPlatform", name, None)
        child = pulumi.ResourceOptions(parent=self)
        self.bucket = _Resource("storage:Bucket", f"{name}-artifacts", {"tags": tags}, ("url",), child)
        self.registry = _Resource("registry:Registry", f"{name}-registry", {"tags": tags}, ("host",), child)
        self.identity = _Resource("iam:Identity", f"{name}-jobs", {"tags": tags}, ("principal",), child)
        self.register_outputs({})


class _Endpoint(pulumi.ComponentResource):
    def __init__(self, name: str, instance: str, replicas: int, image: pulumi.Input[str], tags: dict[str, str]):
        super().__init__("stackwise:fake:InferenceEndpoint", name, None)
        served = _Resource("serving:Endpoint", name, {"instanceType": instance, "minReplicas": replicas,
                                                      "image": image, "tags": tags}, ("name", "url"),
                           pulumi.ResourceOptions(parent=self))
        self.name, self.url = served.name, served.url
        self.register_outputs({})


class FakeCloud(InfraCloud):
    name = NAME
    provider = PROVIDER

    @property
    def policy(self) -> PolicyRules:
        return PolicyRules(tags=dict.fromkeys((f"{PROVIDER}:storage:Bucket", f"{PROVIDER}:serving:Endpoint"), "tags"),
                           instances={f"{PROVIDER}:serving:Endpoint": lambda p: [p.get("instanceType") or ""]},
                           budgets=(f"{PROVIDER}:billing:Budget",), budget_label="Fake budget")

    def platform(self, prefix, config, secrets) -> PlatformOutputs:
        p = _Platform(prefix, config.all_tags)
        return PlatformOutputs(artifact_store=p.bucket.url, job_role=p.identity.principal,
                               training_image=p.registry.host.apply(lambda h: f"{h}/train:latest"),
                               serving_image=p.registry.host.apply(lambda h: f"{h}/serve:latest"), component=p)

    def endpoint(self, prefix, config, platform, image) -> Any:
        ep = config.endpoint
        offer = catalog.offer(ep.gpu, self.name, ep.count)
        return _Endpoint(f"{prefix}-{ep.name}", offer.instance, ep.min_replicas, image, config.all_tags)

    def budget(self, prefix, config, platform) -> None:
        _Resource("billing:Budget", f"{prefix}-budget", {"amount": config.monthly_budget_usd,
                                                          "notifications": config.budget_alert_emails})

    def cluster(self, prefix, config, platform, offer) -> ClusterOutputs:
        raise NotImplementedError("the fake cloud has no Kubernetes service")

    def fake_resource(self, typ: str, inputs: dict[str, Any], state: dict[str, Any], fake: Fake) -> str:
        region = fake.config.region
        if typ.endswith(":storage:Bucket"):
            state["url"] = f"fake://{fake.physical}"
        if typ.endswith(":registry:Registry"):
            state["host"] = f"{fake.physical}.registry.{region}.fake"
        if typ.endswith(":iam:Identity"):
            state["principal"] = f"principal/{fake.physical}"
        if typ.endswith(":serving:Endpoint"):
            state["url"] = f"https://{fake.physical}.{region}.fake/v1"
        return f"fake/{fake.physical}"

    def price(self, resource, pricer) -> bool:
        if resource.type != f"{PROVIDER}:serving:Endpoint":
            return False
        pricer.gpu(resource, resource.inputs.get("instanceType"), float(resource.inputs.get("minReplicas") or 0),
                   "minimum replicas")
        return True


CLOUD = FakeCloud()


def plugged_in(monkeypatch) -> None:
    """Declare the fake cloud: its registry entry, and its offers in the GPU catalog."""
    import stackwise.clouds

    shipped = catalog.catalog()
    with_offers = dataclasses.replace(shipped, offers=shipped.offers + OFFERS, clouds={
        **shipped.clouds, NAME: {"region": "fake-east-1", "as_of": "2026-12-01", "source": "made up"}})
    monkeypatch.setattr(catalog, "catalog", lambda: with_offers)
    monkeypatch.setitem(stackwise.clouds.CLOUDS, NAME, REF)


STACK_FILE = """\
config:
  stackwise:cloud: fake
  stackwise:region: fake-east-1
  stackwise:env: dev
  stackwise:tags: {project: stackwise, owner: ml-platform, cost-center: cc-1042}
  stackwise:monthlyBudgetUsd: 500
  stackwise:budgetAlertEmails: [ml-platform@example.com]
  stackwise:allowedGpus: [T4]
  stackwise:training: {gpu: T4, count: 1}
  stackwise:endpoint: {name: chat, gpu: T4, model: fake://models/chat, minReplicas: 1, maxReplicas: 2}
"""
"""A stack on the fake cloud (`stacks/Pulumi.dev-fake.yaml`)."""


def use_stack(folder: Any, monkeypatch, outputs: dict[str, Any] | None = None) -> None:
    """The stack file `dev-fake` under `folder`/stacks; with `outputs` (beyond cloud and region),
    its outputs file, and the state folder, under `folder` too."""
    stacks = folder / "stacks"
    stacks.mkdir(parents=True, exist_ok=True)
    (stacks / "Pulumi.dev-fake.yaml").write_text(STACK_FILE, encoding="utf-8")
    monkeypatch.setenv("STACKWISE_STACKS_DIR", str(stacks))
    if outputs is not None:
        path = folder / "dev-fake-outputs.json"
        path.write_text(json.dumps({"cloud": NAME, "region": "fake-east-1", **outputs}), encoding="utf-8")
        monkeypatch.setenv("STACKWISE_OUTPUTS", str(path))
        monkeypatch.setenv("STACKWISE_HOME", str(folder / ".stackwise"))


# -- the SDK side: the fake cloud's API, and jobs on it ------------------------------------------------

class FakeCloudAPI:
    """The fake cloud's API.

    Jobs: `POST /jobs` (409 when the name is taken), `GET /jobs/NAME` (404), `GET /jobs?identity=I`,
    `POST /jobs/NAME/stop`; states QUEUED, RUNNING, DONE, FAILED, STOPPED, which the tests move with
    `move` (the cloud's scheduler).

    Endpoints, which exist once the program made them (`add_endpoint`): `GET /endpoints/NAME` (404),
    `PUT /endpoints/NAME/versions/V` (idempotent; a new one serves 0%), `PUT /endpoints/NAME/traffic`
    (400 unless the percents sum to 100 over its versions), `DELETE /endpoints/NAME/versions/V`
    (400 while it carries traffic). `created` counts the versions it made."""

    def __init__(self) -> None:
        from _json_http import JsonHttpServer

        self.jobs: dict[str, dict[str, Any]] = {}
        self.endpoints: dict[str, dict[str, Any]] = {}
        self.created = 0
        self._lock = threading.Lock()
        self._http = JsonHttpServer(self._route)
        self.url = self._http.url

    def stop(self) -> None:
        self._http.stop()

    def move(self, name: str, state: str, error: str | None = None) -> None:
        import time

        with self._lock:
            job = self.jobs[name]
            job.update(state=state, error=error)
            if state == "RUNNING":
                job["started_at"] = time.time()
            elif state in ("DONE", "FAILED", "STOPPED"):
                job["ended_at"] = time.time()

    def add_endpoint(self, name: str) -> None:
        with self._lock:
            self.endpoints[name] = {"name": name, "versions": {}, "traffic": {}}

    def _endpoint(self, method: str, parts: list[str], body: Any) -> tuple:
        endpoint = self.endpoints.get(parts[1]) if len(parts) >= 2 else None
        if endpoint is None:
            return 404, {"error": "NotFound"}
        versions, traffic = endpoint["versions"], endpoint["traffic"]
        if method == "GET" and len(parts) == 2:
            return 200, endpoint
        if method == "PUT" and parts[2:] == ["traffic"]:
            split = {k: int(v) for k, v in body.items()}
            if set(split) - set(versions) or sum(split.values()) != 100:
                return 400, {"error": f"InvalidTraffic: {split} must sum to 100 over {sorted(versions)}"}
            traffic.clear()
            traffic.update({name: split.get(name, 0) for name in versions})
            return 200, endpoint
        if len(parts) == 4 and parts[2] == "versions":
            name = parts[3]
            if method == "PUT":
                if name not in versions:
                    versions[name] = body
                    traffic.setdefault(name, 100 if not traffic else 0)
                    self.created += 1
                return 200, endpoint
            if method == "DELETE":
                if name not in versions:
                    return 404, {"error": "NotFound"}
                if traffic.get(name):
                    return 400, {"error": f"InUse: {name} serves {traffic[name]}%"}
                del versions[name]
                traffic.pop(name, None)
                return 200, endpoint
        return 404, {"error": "NoRoute"}

    def _route(self, method: str, path: str, body: Any, headers: Any) -> tuple:
        import time
        from urllib.parse import parse_qs, urlsplit

        url = urlsplit(path)
        parts = [p for p in url.path.split("/") if p]
        with self._lock:
            if parts[:1] == ["endpoints"]:
                return self._endpoint(method, parts, body)
            if method == "POST" and parts == ["jobs"]:
                if body["name"] in self.jobs:
                    return 409, {"error": "NameTaken"}
                self.jobs[body["name"]] = {**body, "state": "QUEUED", "error": None, "created_at": time.time()}
                return 201, self.jobs[body["name"]]
            if method == "GET" and parts == ["jobs"]:
                identity = parse_qs(url.query).get("identity", [None])[0]
                return 200, [j for j in self.jobs.values() if identity in (None, j["labels"]["identity"])]
            job = self.jobs.get(parts[1]) if len(parts) >= 2 else None
            if job is None:
                return 404, {"error": "NotFound"}
            if method == "POST" and parts[2:] == ["stop"]:
                if job["state"] in ("QUEUED", "RUNNING"):
                    job.update(state="STOPPED", ended_at=time.time())
                return 200, job
            return 200, job


def _call(api: str, method: str, path: str, body: Any = None) -> Any:
    """One call of the fake cloud's API; 429 and 5xx become TransientError, other errors HTTPError."""
    request = urllib.request.Request(api + path, method=method,
                                     data=json.dumps(body).encode() if body is not None else None,
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            return json.loads(answer.read() or b"null")
    except urllib.error.HTTPError as exc:
        if exc.code >= 500 or exc.code == 429:
            raise TransientError(f"fake cloud: HTTP {exc.code}") from None
        raise


class FakeCompute(CloudCompute):
    cloud = NAME
    states = {"QUEUED": JobState.PENDING, "RUNNING": JobState.RUNNING, "DONE": JobState.SUCCEEDED,
              "FAILED": JobState.FAILED, "STOPPED": JobState.CANCELLED}

    def __init__(self, stack: Any):
        super().__init__(stack)
        self.endpoint = os.environ["FAKECLOUD_ENDPOINT"]

    def build(self, spec: Any, name: str, attempt: int = 1) -> dict[str, Any]:
        gpu = spec.compute.gpu or (self.stack.outputs.default_gpu if spec.kind == "finetune" else None)
        instance = catalog.offer(gpu, NAME, spec.compute.count).instance if gpu else "fake.cpu.small"
        return {"name": name, "instance": instance, "nodes": node_count(spec), "spot": spec.compute.spot,
                "image": self.stack.outputs.training_image, "command": bootstrap_command(),
                "env": {**job_environment(spec, name, self.stack, attempt, inline=True),
                        "STACKWISE_NNODES": str(node_count(spec))},
                "labels": {"identity": spec.identity, "attempt": attempt, "stack": self.stack.name}}

    def _http(self, method: str, path: str, body: Any = None) -> Any:
        return _call(self.endpoint, method, path, body)

    def _create(self, request: dict[str, Any], name: str) -> str:
        try:
            self._http("POST", "/jobs", request)
        except urllib.error.HTTPError as exc:
            if exc.code != 409:  # 409: the name is taken, that job is this one
                raise
        return name

    def _find(self, name: str) -> str | None:
        try:
            return self._http("GET", f"/jobs/{name}")["name"]
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                return None
            raise

    def _attempts(self, identity: str) -> list[tuple[int, str]]:
        jobs = self._http("GET", f"/jobs?identity={identity}")
        return sorted((parse_job_name(j["name"])[1], j["name"]) for j in jobs)

    def _to_info(self, job: dict[str, Any]) -> JobInfo:
        from stackwise.adapters.compute.base import decode_spec

        spec = decode_spec(job["env"]["STACKWISE_SPEC_B64"])
        state = self.map_state(job["state"])
        return JobInfo(id=job["name"], kind=spec["kind"], stack=self.stack_name, state=state,
                   created_at=job["created_at"], started_at=job.get("started_at"), ended_at=job.get("ended_at"),
                       error=job.get("error") if state is JobState.FAILED else None, spec=spec,
                       outputs=self.outputs_for(spec, job["name"], state), **identity_fields(job["name"]))

    def _describe(self, job_id: str) -> JobInfo:
        found = self._find(job_id)
        if found is None:
            raise JobNotFoundError(f"no job {job_id!r} on the fake cloud", where=f"stack {self.stack_name!r}",
                                   fix="list jobs with `stackwise jobs list`")
        return self._to_info(self._http("GET", f"/jobs/{job_id}"))

    def _list(self, limit: int) -> list[JobInfo]:
        return [self._to_info(j) for j in self._http("GET", "/jobs")][:limit]

    def _stop(self, job_id: str) -> None:
        self._http("POST", f"/jobs/{job_id}/stop", {})



# -- the SDK side: versions on the fake cloud's endpoints ----------------------------------------------

class FakeDeploy(DeployBackend):
    """The stack's endpoint on the fake cloud; each version is one of its versions (`variant_name`)."""

    cloud = NAME

    def __init__(self, stack: Any):
        super().__init__(stack)
        self.api = os.environ["FAKECLOUD_ENDPOINT"]

    def _endpoint(self, endpoint: str | None) -> dict[str, Any]:
        name = self.endpoint_name(endpoint)
        try:
            return _call(self.api, "GET", f"/endpoints/{name}")
        except urllib.error.HTTPError as exc:
            if exc.code != 404:
                raise
        raise ConfigError(f"the fake cloud has no endpoint {name!r}", where=f"stack {self.stack.name!r}",
                          fix="`pulumi up` the stack (it creates the endpoint), then `stackwise sync`")

    def describe(self, endpoint: str | None = None) -> Deployment:
        raw = self._endpoint(endpoint)
        variants = [Variant(model=v["model"], version=v["version"], traffic=raw["traffic"].get(name, 0),
                            state="ready", name=name) for name, v in raw["versions"].items()]
        return Deployment(endpoint=raw["name"], cloud=NAME, state="ready" if variants else "absent",
                          url=self.endpoint_output(endpoint).url, variants=variants)

    def deploy(self, targets: list[Any], traffic: dict[str, int], endpoint: str | None = None) -> Deployment:
        current = self.describe(endpoint)
        new, split = self.plan(current, targets, traffic)
        scheme = self.stack.outputs.artifact_store.split("://", 1)[0]  # its object store speaks S3 in the tests
        for target in new:
            check_artifact(self.stack, target, scheme, "the fake cloud")
        names = {v.key: v.name for v in current.variants}
        for target in new:
            names[target.key] = variant_name(target.model, target.version)
            _call(self.api, "PUT", f"/endpoints/{current.endpoint}/versions/{names[target.key]}",
                  {"model": target.model, "version": target.version, "artifact": target.artifact_uri,
                   "image": self.endpoint_output(endpoint).serving_image})
        wanted = {names[key]: pct for key, pct in split.items()}
        if wanted != {v.name: v.traffic for v in current.variants}:
            _call(self.api, "PUT", f"/endpoints/{current.endpoint}/traffic", wanted)
        return self.describe(endpoint)

    def undeploy(self, key: str, endpoint: str | None = None) -> Deployment:
        current = self.describe(endpoint)
        variant = self.check_removable(current, key)
        if variant is not None:
            _call(self.api, "DELETE", f"/endpoints/{current.endpoint}/versions/{variant.name}")
        return self.describe(endpoint)
