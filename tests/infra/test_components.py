"""Component hygiene for every stack file: each component registers its outputs, and no resource
is created inside `.apply` (a preview, where outputs are unknown, would not show it)."""

from __future__ import annotations

import contextvars

import pytest

from .conftest import CLOUD_STACKS, stack_config

pulumi = pytest.importorskip("pulumi", reason="pip install 'stackwise[infra]'")
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.mark.parametrize("name", CLOUD_STACKS)
def test_every_component_registers_its_outputs(name, offline_run):
    run = offline_run(name)
    components = [r for r in run.resources if not r.custom]
    assert components
    missing = [r.name for r in components if r.urn not in run.registered_outputs]
    assert not missing, f"components without register_outputs: {missing}"


@pytest.fixture
def created_in_apply(monkeypatch):
    """Record every resource constructed while an `.apply` callback runs."""
    inside = contextvars.ContextVar("inside_apply", default=False)
    found: list[tuple[str, str]] = []
    apply, init = pulumi.Output.apply, pulumi.Resource.__init__

    def tracking_apply(self, func, run_with_unknowns=False):
        def run(value):
            token = inside.set(True)
            try:
                return func(value)
            finally:
                inside.reset(token)
        return apply(self, run, run_with_unknowns)

    def tracking_init(self, t, name, *args, **kwargs):
        if inside.get():
            found.append((t, name))
        init(self, t, name, *args, **kwargs)

    monkeypatch.setattr(pulumi.Output, "apply", tracking_apply)
    monkeypatch.setattr(pulumi.Resource, "__init__", tracking_init)
    return found


@pytest.mark.parametrize("name", CLOUD_STACKS)
def test_no_resource_is_created_inside_apply(name, created_in_apply):
    from stackwise.infra.config import InfraConfig
    from stackwise.infra.offline import run_offline

    raw, source = stack_config(name)
    run = run_offline(InfraConfig.load(raw, source), name)
    assert run.resources and created_in_apply == []


def test_a_resource_created_inside_apply_is_caught(created_in_apply):
    # The check itself: a program that does create one inside `.apply` is reported.
    from stackwise.infra.config import InfraConfig
    from stackwise.infra.offline import _run

    raw, source = stack_config("dev-aws")
    config = InfraConfig.load(raw, source)

    def program() -> None:
        import pulumi_aws as aws

        key = aws.kms.Key("outer")
        key.arn.apply(lambda arn: aws.kms.Alias("inner", target_key_id=arn))
        from stackwise.infra.program import build, export, Secrets
        export(build(config, Secrets()))

    _run(config, "dev-aws", program)
    assert ("aws:kms/alias:Alias", "inner") in created_in_apply
