"""`compute.max_runtime_s` is bounded per cloud when a job is built, before any call: SageMaker's
MaxRuntimeInSeconds cap (28 days), Azure ML's job lifetime (21 days; 7 on low-priority nodes).
Vertex AI documents no maximum (its timeout defaults to 7 days), so GCP takes any value.
The refusal is a SpecError: exit code 2, with what, where and how to fix."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "emulators"))

from cloud_fixtures import OUTPUTS, index_spec  # noqa: E402

from stackwise.errors import SpecError  # noqa: E402

DAY = 86400


def stack(name: str):
    from stackwise.contract import StackOutputs
    from stackwise.stack import Stack

    outputs = StackOutputs.model_validate(OUTPUTS[name])
    return Stack(name=name, cloud=outputs.cloud, region=outputs.region, config={}, source="test", _outputs=outputs)


def with_runtime(seconds: int, spot: bool = False):
    spec = index_spec(0)
    return spec.model_copy(update={"compute": spec.compute.model_copy(update={"max_runtime_s": seconds, "spot": spot})})


def build(cloud_stack: str, spec):
    from stackwise.adapters.compute import azureml, sagemaker, vertex

    module = {"dev-aws": sagemaker, "dev-gcp": vertex, "dev-azure": azureml}[cloud_stack]
    return module.build_request(spec, stack(cloud_stack))


@pytest.mark.parametrize("name, spot, limit", [
    ("dev-aws", False, 28 * DAY), ("dev-aws", True, 28 * DAY),
    ("dev-azure", False, 21 * DAY), ("dev-azure", True, 7 * DAY),
])
def test_runtime_above_the_clouds_limit_is_a_spec_error(name, spot, limit):
    build(name, with_runtime(limit, spot))  # the limit itself is accepted
    with pytest.raises(SpecError) as caught:
        build(name, with_runtime(limit + 1, spot))
    error = caught.value
    assert error.exit_code == 2
    assert f"at most {limit} s" in str(error) and error.where == "spec.compute.max_runtime_s"
    assert f"max_runtime_s to {limit} or less" in error.fix


def test_sagemaker_gets_the_runtime_as_sent_and_botocore_accepts_it():
    import botocore.session
    from botocore.validate import ParamValidator

    request = build("dev-aws", with_runtime(28 * DAY))
    assert request["StoppingCondition"]["MaxRuntimeInSeconds"] == 2419200
    model = botocore.session.get_session().get_service_model("sagemaker").operation_model("CreateTrainingJob")
    assert not ParamValidator().validate(request, model.input_shape).has_errors()


def test_azure_gets_the_runtime_as_an_iso_duration():
    assert build("dev-azure", with_runtime(21 * DAY))["limits"]["timeout"] == "PT504H"


def test_vertex_takes_any_runtime():
    assert build("dev-gcp", with_runtime(30 * DAY))["jobSpec"]["scheduling"]["timeout"] == f"{30 * DAY}s"
