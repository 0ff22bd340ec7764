"""Azure resource names keep Azure's rules for the longest `env` and endpoint name the config
allows: the program is built under mocks with such a stack, and every Azure resource's name, as
set explicitly or as azure-native's auto-naming makes it (the mocks give `<logical name>-` and 8
characters, one more than azure-native appends), is checked against its kind's rule
(learn.microsoft.com, "Naming rules and restrictions for Azure resources", and azure-ai-ml's own
validator for endpoint and deployment names). A resource type with no rule here fails the test,
so a new kind of resource must bring its rule."""

from __future__ import annotations

import re

import pytest

from .conftest import stack_config

pytest.importorskip("pulumi", reason="pip install 'stackwise[infra]'")

GUID = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
# type (after `azure-native:`): (input naming it, min length, max length, pattern, unique beyond the RG)
RULES: dict[str, tuple[str, int, int, str, bool]] = {
    "resources:ResourceGroup": ("resourceGroupName", 1, 90, r"[-\w.()]*[-\w()]", False),
    "managedidentity:UserAssignedIdentity": ("resourceName", 3, 128, r"[a-zA-Z0-9][a-zA-Z0-9_-]*", False),
    "keyvault:Vault": ("vaultName", 3, 24, r"[a-zA-Z](?!.*--)[a-zA-Z0-9-]*[a-zA-Z0-9]", True),
    "keyvault:Key": ("keyName", 1, 127, r"[a-zA-Z0-9-]+", False),
    "keyvault:Secret": ("secretName", 1, 127, r"[a-zA-Z0-9-]+", False),
    "storage:StorageAccount": ("accountName", 3, 24, r"[a-z0-9]+", True),
    "storage:BlobContainer": ("containerName", 3, 63, r"[a-z0-9](?!.*--)[a-z0-9-]*[a-z0-9]", False),
    "storage:BlobServiceProperties": ("blobServicesName", 7, 7, r"default", False),
    "storage:ManagementPolicy": ("managementPolicyName", 7, 7, r"default", False),
    "containerregistry:Registry": ("registryName", 5, 50, r"[a-zA-Z0-9]+", True),
    "network:VirtualNetwork": ("virtualNetworkName", 2, 64, r"[a-zA-Z0-9][\w.-]*\w", False),
    "network:Subnet": ("subnetName", 1, 80, r"[a-zA-Z0-9]([\w.-]*\w)?", False),
    "network:PrivateEndpoint": ("privateEndpointName", 2, 64, r"[a-zA-Z0-9][\w.-]*\w", False),
    "network:PrivateDnsZoneGroup": ("privateDnsZoneGroupName", 1, 80, r"[a-zA-Z0-9]([\w.-]*\w)?", False),
    "privatedns:PrivateZone": ("privateZoneName", 1, 253, r"privatelink(\.[a-z0-9-]+)+", False),
    "privatedns:VirtualNetworkLink": ("virtualNetworkLinkName", 1, 80, r"[a-zA-Z0-9]([\w.-]*\w)?", False),
    "operationalinsights:Workspace": ("workspaceName", 4, 63, r"[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9]", False),
    "applicationinsights:Component": ("resourceName", 1, 260, r"[^%&\\?/]*[^%&\\?/. ]", False),
    "machinelearningservices:Workspace": ("workspaceName", 3, 33, r"[a-zA-Z0-9][a-zA-Z0-9_-]*", False),
    "machinelearningservices:Compute": ("computeName", 3, 16, r"[a-zA-Z][a-zA-Z0-9-]*", False),
    "machinelearningservices:EnvironmentVersion": ("name", 1, 255, r"[a-zA-Z0-9][a-zA-Z0-9._-]*", False),
    "machinelearningservices:OnlineEndpoint": ("endpointName", 3, 32, r"[a-zA-Z]([-a-zA-Z0-9]*[a-zA-Z0-9])?", True),
    "machinelearningservices:OnlineDeployment": ("deploymentName", 3, 32, r"[a-zA-Z]([-a-zA-Z0-9]*[a-zA-Z0-9])?",
                                                 False),
    "monitor:ActionGroup": ("actionGroupName", 1, 260, r"[^%&\\?/#<>*:+]+", False),
    "monitor:MetricAlert": ("ruleName", 1, 260, r"[^*#&+:<>?@%{}\\/]+", False),
    "monitor:AutoscaleSetting": ("autoscaleSettingName", 1, 260, r"[^<>%&:\\?/#|]+", False),
    "consumption:Budget": ("budgetName", 1, 63, r"[\w-]+", False),
    "authorization:RoleAssignment": ("roleAssignmentName", 36, 36, GUID, False),
}

# The longest values infra/config.py allows: env `^[a-z][a-z0-9-]{0,15}$`, endpoint name
# `^[a-z][a-z0-9-]{0,40}$`; with hyphens where they hurt most (runs, a trailing one) and digits.
LONGEST = [
    ("abcdefghijklmnop", "e" * 41, "embedded"),
    ("a-9-9-9-9-9-9-9-", "e" + "-" * 39 + "9", "pinecone"),
    ("z" * 16, "x-" * 20 + "y", "embedded"),
]
_RUNS: dict[tuple[str, str, str], object] = {}


def longest_run(env: str, endpoint: str, store: str):
    """dev-azure's stack file with the given env, endpoint name and vector store, built under mocks."""
    from stackwise.infra.config import InfraConfig
    from stackwise.infra.offline import run_offline

    key = (env, endpoint, store)
    if key not in _RUNS:
        raw, _ = stack_config("dev-azure")
        raw = {**raw, "env": env, "endpoint": {**raw["endpoint"], "name": endpoint},
               "vectorStore": {"kind": store}}
        config = InfraConfig.load(raw, "tests/infra/test_azure_names.py")
        assert (len(config.env), len(config.endpoint.name)) == (16, 41)
        _RUNS[key] = run_offline(config, "dev-azure")
    return _RUNS[key]


def physical_name(resource) -> str:
    """The name Azure gets: the naming input when the program sets it, else the auto-name."""
    key = RULES[resource.type.removeprefix("azure-native:")][0]
    return resource.inputs.get(key) or resource.state["name"]


def broken(resource) -> str | None:
    kind = resource.type.removeprefix("azure-native:")
    key, low, high, pattern, _ = RULES[kind]
    if kind == "authorization:RoleAssignment":
        # azure-native makes a GUID for an unnamed role assignment; a set name must be one.
        name = resource.inputs.get(key)
        return None if name is None or re.fullmatch(GUID, name) else f"{name!r} is not a GUID"
    name = physical_name(resource)
    if not low <= len(name) <= high:
        return f"{name!r} has {len(name)} characters, not {low}-{high}"
    if not re.fullmatch(pattern, name):
        return f"{name!r} does not match {pattern}"
    return None


@pytest.mark.parametrize("env,endpoint,store", LONGEST)
def test_every_azure_name_keeps_its_rule(env, endpoint, store):
    run = longest_run(env, endpoint, store)
    azure = [r for r in run.resources if r.custom and r.type.startswith("azure-native:")]
    unknown = sorted({r.type for r in azure if r.type.removeprefix("azure-native:") not in RULES})
    assert not unknown, f"no naming rule for {unknown}: add Azure's rule to RULES"
    problems = {f"{r.type} {r.name}": broken(r) for r in azure}
    assert {k: v for k, v in problems.items() if v} == {}
    for group in (r for r in azure if r.type == "azure-native:monitor:ActionGroup"):
        assert 1 <= len(group.inputs["groupShortName"]) <= 12


@pytest.mark.parametrize("env,endpoint,store", LONGEST)
def test_endpoint_and_deployment_names_pass_azure_ml_s_own_validator(env, endpoint, store):
    pytest.importorskip("azure.ai.ml", reason="install stackwise[azure]")
    from azure.ai.ml.entities._endpoint._endpoint_helpers import validate_endpoint_or_deployment_name

    run = longest_run(env, endpoint, store)
    (online,) = [r for r in run.resources if r.type.endswith(":OnlineEndpoint")]
    (deployment,) = [r for r in run.resources if r.type.endswith(":OnlineDeployment")]
    validate_endpoint_or_deployment_name(online.inputs["endpointName"])
    validate_endpoint_or_deployment_name(deployment.inputs["deploymentName"], is_deployment=True)
    assert run.outputs.endpoints[0].name == online.inputs["endpointName"]


def test_names_unique_beyond_the_resource_group_carry_the_stack_s_suffix():
    # Key Vault and storage names are worldwide, an online endpoint's per region: each ends with
    # a digest of the subscription and the stack's resource group, so another tenant's stack
    # with the same env cannot hold the name, and a re-created stack (new resource group) does
    # not meet its soft-deleted Key Vault's reserved name.
    from stackwise.infra.azure import names
    from stackwise.infra.azure.cloud import FAKE_SUBSCRIPTION

    run = longest_run(*LONGEST[0])
    (group,) = [r for r in run.resources if r.type == "azure-native:resources:ResourceGroup"]
    suffix = names.stable_suffix(FAKE_SUBSCRIPTION, group.state["name"])
    for r in run.resources:
        kind = r.type.removeprefix("azure-native:")
        if kind in RULES and RULES[kind][4]:
            name = r.inputs[RULES[kind][0]]
            expected = names.stable_suffix(FAKE_SUBSCRIPTION, group.state["name"], r.parent or "") \
                if kind.endswith("OnlineEndpoint") else suffix
            assert name.endswith(expected), (kind, name)


@pytest.mark.parametrize("base", ["sw-a", "sw-abcdefghijklmnop", "sw-a-9-9-9-9-9-9-9-", "sw-a--------------9"])
def test_global_names_fit_for_any_env(base):
    from stackwise.infra.azure import names

    for suffix in ("000000", "fffff9", names.stable_suffix("s", "rg")):
        vault = names.vault_name(base, suffix)
        assert 3 <= len(vault) <= 24 and re.fullmatch(r"[a-z](?!.*--)[a-z0-9-]*[a-z0-9]", vault), vault
        account = names.storage_account_name(base, suffix)
        assert re.fullmatch(r"[a-z0-9]{3,24}", account), account
        registry = names.registry_name(base, suffix)
        assert re.fullmatch(r"[a-zA-Z0-9]{5,50}", registry), registry


def test_endpoint_names_differ_per_subscription_and_stay_put():
    from stackwise.infra.azure import names

    base = "sw-abcdefghijklmnop-" + "e" * 41
    one = names.online_endpoint_name(base, names.stable_suffix("sub-1", "rg", base))
    assert one == names.online_endpoint_name(base, names.stable_suffix("sub-1", "rg", base))
    assert one != names.online_endpoint_name(base, names.stable_suffix("sub-2", "rg", base))
    assert len(one) <= 32 and one.startswith("sw-abcdefghijklmnop-")
