"""Narrow provider loading (infra/providers.py): the same classes and the same plan as loading
every service whole, without the services' `__init__` (which imports every resource module)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

from .conftest import REPO, cli_env

pytest.importorskip("pulumi", reason="pip install 'stackwise[infra]'")

STACKS = ("dev-aws", "dev-gcp", "dev-azure")


def python(tmp_path, code: str, **env: str) -> str:
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=REPO, capture_output=True, text=True,
                          env={**cli_env(tmp_path), **env}, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def test_module_of_each_generated_name():
    from stackwise.infra.providers import modules_for

    assert modules_for("Network") == ["network", "_enums"]
    assert modules_for("CryptoKeyIAMMember") == ["crypto_key_iam_member", "_enums"]
    assert modules_for("AiEndpointWithModelGardenDeployment")[0] == "ai_endpoint_with_model_garden_deployment"
    assert modules_for("BucketServerSideEncryptionConfiguration")[0] == "bucket_server_side_encryption_configuration"
    assert modules_for("AmlComputeArgs") == ["aml_compute", "_inputs"]
    assert modules_for("get_project_output") == ["get_project"]
    assert modules_for("get_client_config") == ["get_client_config"]


def test_narrow_names_are_the_full_packages_objects(tmp_path):
    out = python(tmp_path, """
        import sys, types
        from stackwise.infra.providers import provider
        gcp = provider("pulumi_gcp")
        narrow = (gcp.compute.Network, gcp.compute.SubnetworkArgs, gcp.organizations.get_project_output)
        whole = type(sys.modules["pulumi_gcp.compute"]) is types.ModuleType
        import pulumi_gcp
        full = (pulumi_gcp.compute.Network, pulumi_gcp.compute.SubnetworkArgs,
                pulumi_gcp.organizations.get_project_output)
        print(whole, all(a is b for a, b in zip(narrow, full)), len(dir(pulumi_gcp.compute)) > 1000)
    """)
    # Before the full load the service was still Pulumi's lazy stub; after it, the same objects.
    assert out.split() == ["False", "True", "True"]


def test_a_name_outside_the_generated_layout_comes_from_the_whole_service():
    from stackwise.infra.providers import provider

    with pytest.raises(AttributeError):
        provider("pulumi_gcp").billing.NoSuchResource


def test_every_stack_plans_the_same_with_narrow_and_whole_services_and_loads_no_service_whole(tmp_path):
    code = f"""
        import json, sys, types
        from stackwise.infra.plan import plan
        from stackwise.stack import load_stack
        results = {{}}
        for name in {STACKS!r}:
            result = plan(load_stack(name))
            result.pop("seconds")
            results[name] = result
        whole = sorted(name for name, module in sys.modules.items()
                       if name.startswith(("pulumi_aws.", "pulumi_gcp.", "pulumi_azure_native.")) and name.count(".") == 1
                       and hasattr(module, "__path__") and type(module) is types.ModuleType)
        print(json.dumps({{"plans": results, "whole": whole}}))
    """
    narrow = json.loads(python(tmp_path, code))
    full = json.loads(python(tmp_path, code, STACKWISE_NARROW_IMPORTS="0"))
    assert narrow["plans"] == full["plans"]
    assert narrow["whole"] == [], f"services loaded whole (add their names' modules to the narrow path): {narrow['whole']}"
    assert {"pulumi_gcp.compute", "pulumi_aws.sagemaker", "pulumi_azure_native.network"} <= set(full["whole"])
