"""The AWS program's private network, alert encryption and storage rules, under mocks
(preview=False) for the repository's AWS stack files.

Checked: the jobs' security group reaches S3 through the gateway endpoint's prefix list (not only
the VPC range, which S3 traffic never targets) and the AWS services jobs need through interface
endpoints with private DNS; no route or rule to the internet unless `internetEgress` (then a NAT
gateway, its default route and HTTPS egress); an endpoint serving a Hugging Face id without a
route to it is a ConfigError; the stack exports the subnets and security group jobs run in; the
alarm topic is encrypted with a key CloudWatch may use; endpoint configs on local-NVMe instances
carry no KMS key (SageMaker refuses one) and the policy pack knows it; the checkpoint lifecycle
rule matches the prefix the SageMaker adapter writes under.
"""

from __future__ import annotations

import copy
import json
from types import SimpleNamespace

import pytest

from .conftest import stack_config

pytest.importorskip("pulumi", reason="pip install 'stackwise[infra]'")
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

def by_type(run, suffix: str):
    return [r for r in run.resources if r.type.endswith(suffix)]


def one(run, suffix: str, name: str):
    (found,) = [r for r in by_type(run, suffix) if r.name == name]
    return found


@pytest.fixture
def build():
    """Build a stack file's program under mocks (which answer a gateway endpoint's prefix list id
    as AWS does: infra/offline.py), with `changes` to its config."""
    from stackwise.infra import offline
    from stackwise.infra.config import InfraConfig

    def run(name: str = "dev-aws", **changes):
        raw, source = stack_config(name)
        config = InfraConfig.load(raw, source)
        if changes:
            config = config.model_copy(update=changes)
        return offline.run_offline(config, name)

    return run


def egress_rules(run):
    return one(run, "SecurityGroup", "sw-dev-jobs-sg").inputs["egress"]


def test_jobs_reach_s3_through_the_gateway_endpoints_prefix_list(build):
    run = build()
    gateway = one(run, "VpcEndpoint", "sw-dev-s3-endpoint")
    assert gateway.inputs["vpcEndpointType"] == "Gateway" and gateway.inputs["serviceName"] == "com.amazonaws.us-east-1.s3"
    prefix_list = gateway.state["prefixListId"]  # computed by AWS (the mocks fake one)
    assert prefix_list.startswith("pl-")
    https = [r for r in egress_rules(run) if r.get("prefixListIds")]
    assert https == [{"protocol": "tcp", "fromPort": 443, "toPort": 443, "prefixListIds": [prefix_list],
                      "description": "S3 through the gateway endpoint"}]


def test_jobs_reach_ecr_logs_sts_and_secrets_through_interface_endpoints(build):
    from stackwise.infra.aws.platform import INTERFACE_ENDPOINTS

    run = build()
    private = [r for r in by_type(run, "ec2/subnet:Subnet") if r.name.startswith("sw-dev-private-")]
    assert len(private) == 2
    endpoints_sg = one(run, "SecurityGroup", "sw-dev-endpoints-sg")
    interface = {r.inputs["serviceName"].removeprefix("com.amazonaws.us-east-1."): r
                 for r in by_type(run, "VpcEndpoint") if r.inputs["vpcEndpointType"] == "Interface"}
    assert set(interface) == set(INTERFACE_ENDPOINTS) >= {"ecr.api", "ecr.dkr", "logs", "sts"}
    for endpoint in interface.values():
        assert endpoint.inputs["privateDnsEnabled"] is True, "the SDKs' default host names must resolve to it"
        assert len(endpoint.inputs["subnetIds"]) == 2
        assert len(endpoint.inputs["securityGroupIds"]) == 1
    # the endpoints admit HTTPS from the jobs' group, and the jobs' group may send HTTPS in the VPC
    (ingress,) = endpoints_sg.inputs["ingress"]
    assert (ingress["protocol"], ingress["fromPort"], ingress["toPort"]) == ("tcp", 443, 443)
    assert len(ingress["securityGroups"]) == 1
    assert {"protocol": "tcp", "fromPort": 443, "toPort": 443, "cidrBlocks": ["10.42.0.0/16"],
            "description": "AWS services through the VPC's interface endpoints"} in egress_rules(run)


def test_no_route_to_the_internet_by_default(build):
    run = build()
    assert not by_type(run, "NatGateway") and not by_type(run, "InternetGateway") and not by_type(run, "ec2/route:Route")
    assert all("0.0.0.0/0" not in (r.get("cidrBlocks") or []) for r in egress_rules(run))


def test_internet_egress_adds_a_nat_gateway_and_https_out(build):
    raw, source = stack_config("dev-aws")
    from stackwise.infra.config import InfraConfig

    network = SimpleNamespace(cidr=InfraConfig.load(raw, source).network.cidr, internet_egress=True)
    run = build(network=network)
    (nat,) = by_type(run, "NatGateway")
    (route,) = by_type(run, "ec2/route:Route")
    assert route.inputs["destinationCidrBlock"] == "0.0.0.0/0" and route.inputs["natGatewayId"]
    assert one(run, "Subnet", "sw-dev-public-a").inputs["cidrBlock"] == "10.42.32.0/20"
    assert {"protocol": "tcp", "fromPort": 443, "toPort": 443, "cidrBlocks": ["0.0.0.0/0"],
            "description": "the internet (model hubs) through the NAT gateway"} in egress_rules(run)
    assert nat.inputs["subnetId"]


def test_a_hugging_face_endpoint_without_a_route_to_it_is_refused(build):
    from stackwise.errors import ConfigError
    from stackwise.infra.config import InfraConfig

    raw, source = stack_config("dev-aws")
    config = InfraConfig.load(raw, source)
    hf = config.endpoint.model_copy(update={"model": "HuggingFaceTB/SmolLM2-1.7B-Instruct"})
    with pytest.raises(ConfigError) as caught:
        build(endpoint=hf)
    assert "no route to the internet" in str(caught.value) and "s3://" in caught.value.fix
    assert "internetEgress" in caught.value.fix
    # with a NAT gateway it builds, and the model reads HF_MODEL_ID
    run = build(endpoint=hf, network=SimpleNamespace(cidr=config.network.cidr, internet_egress=True))
    (model,) = by_type(run, "sagemaker/model:Model")
    assert model.inputs["primaryContainer"]["environment"]["HF_MODEL_ID"] == hf.model


def test_the_stack_exports_the_network_jobs_and_models_run_in(build):
    run = build()
    subnets = {r.name: r for r in by_type(run, "ec2/subnet:Subnet")}
    network = run.outputs.network
    assert network is not None and len(network.subnets) == 2 and len(network.security_groups) == 1
    assert all(s.startswith("sw-dev-private-") for s in network.subnets) and set(subnets) >= {
        "sw-dev-private-a", "sw-dev-private-b"}
    assert network.security_groups[0].startswith("sw-dev-jobs-sg")
    # the model the program makes runs in the same place
    (model,) = by_type(run, "sagemaker/model:Model")
    assert model.inputs["vpcConfig"] == {"subnets": network.subnets, "securityGroupIds": network.security_groups}


def test_alarm_notifications_are_encrypted_with_a_key_cloudwatch_may_use(offline_run):
    run = offline_run("dev-aws")
    (topic,) = by_type(run, "sns/topic:Topic")
    key = one(run, "kms/key:Key", "sw-dev-chat-alerts-key")
    assert topic.inputs["kmsMasterKeyId"] == key.state["arn"]
    assert not topic.inputs["kmsMasterKeyId"].endswith("alias/aws/sns")
    policy = json.loads(key.inputs["policy"])
    (cloudwatch,) = [s for s in policy["Statement"] if s["Principal"].get("Service") == "cloudwatch.amazonaws.com"]
    assert cloudwatch["Effect"] == "Allow"
    assert set(cloudwatch["Action"]) == {"kms:Decrypt", "kms:GenerateDataKey*"}
    (admin,) = [s for s in policy["Statement"] if "AWS" in s["Principal"]]
    assert admin["Principal"]["AWS"] == "arn:aws:iam::123456789012:root" and admin["Action"] == "kms:*"
    assert key.inputs["enableKeyRotation"] is True


def test_the_policy_pack_refuses_the_aws_managed_sns_key(offline_run):
    from .test_policies import mutated, violations

    run = offline_run("dev-aws")
    resources = mutated(run, "sns/topic:Topic", lambda r: r.inputs.update(kmsMasterKeyId="alias/aws/sns"))
    assert [v[:2] for v in violations(run, resources)] == [("encryption-at-rest", "sw-dev-chat-alerts")]


def test_endpoint_configs_on_local_nvme_instances_carry_no_kms_key(offline_run):
    from stackwise.infra.aws.policy import has_local_nvme

    from .test_policies import violations

    run = offline_run("dev-aws")
    (config,) = by_type(run, "endpointConfiguration:EndpointConfiguration")
    (variant,) = config.inputs["productionVariants"]
    assert variant["instanceType"] == "ml.g5.xlarge" and has_local_nvme("ml.g5.xlarge")
    assert "kmsKeyArn" not in config.inputs, "CreateEndpointConfig fails with a KmsKeyId on local-NVMe instances"
    # the policy: a key on local NVMe is refused, no key on an EBS-backed instance is refused
    with_key = copy.deepcopy(run.resources)
    for r in with_key:
        if r.name == config.name:
            r.inputs["kmsKeyArn"] = "arn:aws:kms:us-east-1:123456789012:key/k"
    assert any("local NVMe" in v[2] for v in violations(run, with_key))
    ebs = copy.deepcopy(run.resources)
    for r in ebs:
        if r.name == config.name:
            r.inputs["productionVariants"][0]["instanceType"] = "ml.m5.xlarge"
    assert any("kmsKeyArn" in v[2] for v in violations(run, ebs))


def finetune_request(run):
    """The CreateTrainingJob the SageMaker adapter builds for a fine-tune on this stack's outputs."""
    from stackwise.adapters.compute.sagemaker import build_request
    from stackwise.specs import FineTuneSpec
    from stackwise.stack import Stack

    stack = Stack(name=run.stack, cloud="aws", region=run.outputs.region, config={}, source="test",
                  _outputs=run.outputs)
    spec = FineTuneSpec(base="HuggingFaceTB/SmolLM2-135M", data=f"{run.outputs.artifact_store}/data/train.jsonl")
    return build_request(spec, stack)


def test_the_checkpoint_rule_matches_where_the_adapter_writes(offline_run):
    run = offline_run("dev-aws")
    (lifecycle,) = by_type(run, "BucketLifecycleConfiguration")
    (rule,) = [r for r in lifecycle.inputs["rules"] if r["id"] == "checkpoints-to-infrequent-access"]
    request = finetune_request(run)
    bucket = run.outputs.artifact_store.removeprefix("s3://")
    key = request["CheckpointConfig"]["S3Uri"].removeprefix(f"s3://{bucket}/") + "/checkpoint-50/model.safetensors"
    assert key.startswith(rule["filter"]["prefix"]), (key, rule)
    assert rule["transitions"] == [{"days": 30, "storageClass": "STANDARD_IA"}]
    # and the job runs in the network the stack exports
    assert request["VpcConfig"] == {"Subnets": run.outputs.network.subnets,
                                    "SecurityGroupIds": run.outputs.network.security_groups}


def test_internet_egress_is_a_stack_file_key():
    """`stackwise:network: {internetEgress: true}` in a stack file turns the NAT gateway on; off by default."""
    from stackwise.infra.config import InfraConfig

    raw, source = stack_config("dev-aws")
    assert InfraConfig.load(raw, source).network.internet_egress is False
    raw = {**raw, "network": {**raw.get("network", {}), "internetEgress": True}}
    assert InfraConfig.load(raw, source).network.internet_egress is True
