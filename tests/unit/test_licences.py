"""Licence table and the stack's licence policy (allowedLicenses, allowGated)."""

from __future__ import annotations

import pytest

from stackwise import licences
from stackwise.errors import InputError


def test_table_has_spdx_and_custom_licences_with_terms():
    assert licences.known("Apache-2.0").commercial == "yes"
    assert licences.known("mit").commercial == "yes"
    assert licences.known("qwen-research").commercial == "no"
    for custom in ("llama3.1", "llama3.2", "gemma", "qwen"):
        assert licences.known(custom).commercial == "conditional"
    assert all(lic.url for lic in licences.KNOWN.values())


def test_unknown_licence_suggests_closest():
    with pytest.raises(InputError) as err:
        licences.known("apache2")
    assert err.value.exit_code == 2 and "did you mean apache-2.0" in err.value.fix


def test_no_policy_allows_everything():
    licences.check_allowed("llama-3.1-8b-instruct", {})
    licences.check_allowed("/some/local/folder", {})


def test_disallowed_licence_names_model_licence_key_and_fix():
    with pytest.raises(InputError) as err:
        licences.check_allowed("meta-llama/Llama-3.1-8B-Instruct", {"allowedLicenses": ["apache-2.0", "mit"]})
    msg = str(err.value)
    assert "llama3.1" in msg and "meta-llama/Llama-3.1-8B-Instruct" in msg
    assert "stackwise:allowedLicenses" in err.value.where and "--license apache-2.0" in err.value.fix
    licences.check_allowed("qwen2.5-7b-instruct", {"allowedLicenses": ["apache-2.0"]})  # allowed
    with pytest.raises(InputError):  # Qwen2.5-72B is under the Qwen licence, not Apache
        licences.check_allowed("qwen2.5-72b-instruct", {"allowedLicenses": ["apache-2.0"]})


def test_gated_refused_only_when_allow_gated_false():
    licences.check_allowed("gemma-2-2b-it", {"allowGated": True})
    with pytest.raises(InputError) as err:
        licences.check_allowed("gemma-2-2b-it", {"allowGated": False})
    assert "stackwise:allowGated" in err.value.where
    licences.check_allowed("smollm2-135m-instruct", {"allowGated": False})


def test_unknown_base_refused_only_under_a_licence_list_and_declaring_fixes_it():
    policy = {"allowedLicenses": ["apache-2.0"]}
    with pytest.raises(InputError) as err:
        licences.check_allowed("s3://bucket/my-model", policy)
    assert "licence: <id>" in err.value.fix
    licences.check_allowed("s3://bucket/my-model", policy, declared="apache-2.0")
    with pytest.raises(InputError):
        licences.check_allowed("s3://bucket/my-model", policy, declared="cc-by-nc-4.0")


def test_bad_config_values_exit_2():
    with pytest.raises(InputError) as err:
        licences.check_allowed("smollm2-135m-instruct", {"allowedLicenses": ["apache-2.0", "gpl-9"]})
    assert "gpl-9" in str(err.value)
    with pytest.raises(InputError):
        licences.check_allowed("smollm2-135m-instruct", {"allowGated": "no"})


def test_licence_record_for_card_and_registry():
    rec = licences.licence_record("Llama-3.2-1B-Instruct")
    assert rec["licence"] == "llama3.2" and rec["gated"] == "true" and rec["commercial_use"] == "conditional"
    assert rec["base_hf_id"] == "meta-llama/Llama-3.2-1B-Instruct" and rec["licence_source"] == "catalog"
    assert all(isinstance(v, str) for v in rec.values())
    assert licences.licence_record("./my-folder")["licence"] == "unknown"
