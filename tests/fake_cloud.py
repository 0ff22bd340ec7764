"""A cloud that exists only in the tests: "add a cloud" done in one module, touching no shared file.

`plugged_in(monkeypatch)` declares it the way a real cloud is declared, one entry in the
registry `stackwise.clouds.CLOUDS`, and gives the GPU catalog its offers (a real cloud adds
them to stackwise/data/gpu_catalog.yaml). Its Pulumi side is `CLOUD`: a small platform, an
endpoint and a budget made of plain `pulumi.CustomResource`s of a made-up provider `fakecloud`,
what the mocks answer for them, how `stackwise plan` prices them, and its policy rules.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import pulumi

from stackwise import catalog
from stackwise.clouds import CloudRef
from stackwise.infra.cloud import ClusterOutputs, Fake, InfraCloud, PlatformOutputs, PolicyRules

NAME = "fake"
PROVIDER = "fakecloud"
REF = CloudRef(NAME, infra=f"{__name__}:CLOUD", extra="fake", compute=f"{__name__}:FakeCompute",
               deploy=f"{__name__}:FakeDeploy", artifact_scheme="fake")
"""Its registry entry (the compute and deploy classes are the compute contract's half)."""

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
