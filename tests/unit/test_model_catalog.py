"""The shipped model catalog: validation, lookup with typo suggestions, filters, the CLI command."""

from __future__ import annotations

import json

import pytest
import typer
import yaml
from typer.testing import CliRunner

from stackwise import model_catalog as mc
from stackwise.cli.catalog import catalog as catalog_command
from stackwise.errors import ConfigError, InputError

REQUIRED = ["llama-3.1-8b-instruct", "llama-3.1-70b-instruct", "llama-3.2-1b-instruct", "llama-3.2-3b-instruct",
            "mistral-7b-instruct-v0.3", "mixtral-8x7b-instruct", "qwen2.5-0.5b-instruct", "qwen2.5-1.5b-instruct",
            "qwen2.5-7b-instruct", "qwen2.5-14b-instruct", "qwen2.5-32b-instruct", "qwen2.5-72b-instruct",
            "gemma-2-2b-it", "gemma-2-9b-it", "gemma-2-27b-it", "phi-3.5-mini-instruct", "phi-4",
            "smollm2-135m-instruct", "smollm2-360m-instruct", "smollm2-1.7b-instruct"]


def test_catalog_is_dated_complete_and_every_fact_marked():
    cat = mc.catalog()
    assert cat.as_of == "2026-12-05"
    ids = {m.id for m in cat.models}
    assert set(REQUIRED) <= ids
    assert {a.provider for a in cat.api_models} == {"openai", "anthropic", "google"}
    for m in cat.models:  # each check is dated and names a source
        for text in m.checked.values():
            assert text[:10].count("-") == 2 and ":" in text


def test_published_params_agree_with_the_architecture():
    # the card's count vs. the count computed from config.json's numbers: catches a wrong layer or width
    for m in mc.catalog().models:
        assert m.architecture.params() == pytest.approx(m.params_b * 1e9, rel=0.02), m.id
    mixtral = mc.get("mixtral-8x7b-instruct")
    assert mixtral.architecture.active_params() == pytest.approx(12.9e9, rel=0.01)


def test_smollm2_entry_matches_the_real_config():
    import json as _json
    from pathlib import Path

    from stackwise.training.models import resolve_base

    try:  # converts the shipped GGUF once (~20 s), then reads the cached config
        path = Path(resolve_base("smollm2-135m-instruct").location) / "config.json"
    except Exception as exc:  # the shipping package is not installed
        pytest.skip(f"SmolLM2-135M not available: {exc}")
    cfg = _json.loads(path.read_text())
    a = mc.get("smollm2-135m-instruct").architecture
    assert (a.layers, a.hidden, a.intermediate, a.heads, a.kv_heads, a.head_dim, a.vocab, a.tied_embeddings) == (
        cfg["num_hidden_layers"], cfg["hidden_size"], cfg["intermediate_size"], cfg["num_attention_heads"],
        cfg["num_key_value_heads"], cfg["head_dim"], cfg["vocab_size"], cfg["tie_word_embeddings"])
    assert Path(path).is_file()


def test_get_by_short_or_hf_id_and_typo_suggestion():
    assert mc.get("META-LLAMA/llama-3.1-8b-instruct").id == "llama-3.1-8b-instruct"
    assert mc.get("gpt-4o").provider == "openai"
    with pytest.raises(InputError) as err:
        mc.get("llama-3.1-8b-instrcut")
    assert err.value.exit_code == 2 and "did you mean llama-3.1-8b-instruct" in err.value.fix


def test_filters_by_licence_and_fit():
    apache = {m.id for m in mc.models(license="apache-2.0")}
    assert "qwen2.5-7b-instruct" in apache and "qwen2.5-72b-instruct" not in apache and "phi-4" not in apache
    small = {m.id for m in mc.models(fits=("A10G", 1), method="qlora", seq_len=512)}
    assert "llama-3.1-8b-instruct" in small and "llama-3.1-70b-instruct" not in small
    with pytest.raises(InputError):
        mc.models(license="apache2")


def _data():
    from importlib import resources

    return yaml.safe_load(resources.files("stackwise").joinpath("data/model_catalog.yaml").read_text())


def test_validation_refuses_unknown_licence_and_unmarked_facts():
    data = _data()
    data["models"][0]["licence"]["id"] = "wtfpl-ish"
    with pytest.raises(ConfigError) as err:
        mc.parse(data)
    assert "models.0.licence.id" in str(err.value)
    data = _data()
    data["models"][1].pop("unverified")  # the licence fact is then neither checked nor unverified
    with pytest.raises(ConfigError):
        mc.parse(data)


def _cli(*args):
    app = typer.Typer()
    app.command("catalog")(catalog_command)
    app.command("other")(lambda: None)
    return CliRunner().invoke(app, ["catalog", *args], env={"COLUMNS": "200"})


def test_cli_json_and_table():
    result = _cli("--license", "mit", "--json")
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)["models"]
    assert {r["id"] for r in rows} == {"phi-3.5-mini-instruct", "phi-4"}
    assert all(r["commercial"] == "yes" and r["memory_gb"] > 0 and r["gpus"] for r in rows)
    result = _cli("--fits", "a10g:1", "--method", "qlora", "--gradient-checkpointing")
    assert result.exit_code == 0 and "smollm2" in result.output


@pytest.mark.parametrize("args,where", [(["--license", "apache2"], "licence"), (["--fits", "B200:1"], "--fits"),
                                        (["--fits", "A10G:x"], "--fits"), (["--method", "prefix"], "--method")])
def test_cli_bad_input_is_an_input_error(args, where):
    result = _cli(*args)
    assert isinstance(result.exception, InputError) and result.exception.exit_code == 2
    assert where in result.exception.where and result.exception.fix
