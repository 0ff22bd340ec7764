"""Cost and placement: ranking the GPU catalog's offers, fine-tune cost estimates, choosing, budgets.

Expected values come from the YAML read here with PyYAML (not through stackwise.catalog) and from
hand arithmetic, never from the code under test.
"""

from __future__ import annotations

import re
from importlib import resources

import pytest
import yaml

from stackwise import offers
from stackwise.errors import InputError, StackwiseError


@pytest.fixture(scope="module")
def raw() -> dict:
    return yaml.safe_load(resources.files("stackwise").joinpath("data/gpu_catalog.yaml").read_text("utf-8"))


def _raw_offers(raw: dict, gpu: str | None = None, count: int | None = None) -> list[dict]:
    return [o for o in raw["offers"] if (gpu is None or o["gpu"] == gpu) and (count is None or o["count"] == count)]


def test_cheapest_a100_8_across_clouds_is_the_yaml_minimum_and_the_order_is_by_price(raw):
    by_hand = sorted(_raw_offers(raw, "A100-40GB", 8), key=lambda o: o["on_demand"])
    ranked = offers.rank("A100", 8)  # alias A100 = A100-40GB
    assert [(r.cloud, r.instance, r.hourly_usd) for r in ranked] == \
        [(o["cloud"], o["instance"], o["on_demand"]) for o in by_hand]
    best = ranked[0]
    assert (best.rank, best.gpu, best.count, best.total_memory_gb) == (1, "A100-40GB", 8, 8 * 40)
    assert best.region == raw["clouds"][best.cloud]["region"] and best.as_of == raw["clouds"][best.cloud]["as_of"]
    assert best.price_used == "on_demand" and best.price_checked
    assert best.price_note == by_hand[0]["checked"]["on_demand"]


def test_spot_ranks_by_spot_price_and_reports_that_figures_note(raw):
    l4 = _raw_offers(raw, "L4", 1)
    on_demand_first = min(l4, key=lambda o: o["on_demand"])
    spot_first = min(l4, key=lambda o: o["spot"])
    assert on_demand_first["cloud"] != spot_first["cloud"]  # the catalog makes this a real test
    assert offers.rank("L4", 1)[0].instance == on_demand_first["instance"]
    best = offers.rank("L4", 1, spot=True)[0]
    assert (best.instance, best.hourly_usd, best.price_used) == (spot_first["instance"], spot_first["spot"], "spot")
    note = (spot_first.get("checked") or {}).get("spot") or spot_first["unverified"]["spot"]
    assert best.price_note == note and best.price_checked == ("spot" in (spot_first.get("checked") or {}))


def test_price_ties_go_to_fewer_gpus_then_the_clouds_name(raw):
    # gcp a2-highgpu-1g (1 x A100-40GB) and azure NC24ads (1 x A100-80GB) cost the same per hour
    tied = [o for o in raw["offers"] if o["count"] == 1 and o["on_demand"] == 3.673]
    assert {o["cloud"] for o in tied} == {"gcp", "azure"}
    ranked = offers.rank(None, 1, min_memory_gb_per_gpu=40)
    assert [r.cloud for r in ranked[:2]] == ["azure", "gcp"] and ranked[0].hourly_usd == ranked[1].hourly_usd
    key = offers.sort_key
    assert key(1.0, 1, "gcp", "b") < key(1.0, 8, "aws", "a") < key(1.0, 8, "azure", "a")
    assert offers.sort_key(0.99, 8, "gcp", "z") < offers.sort_key(1.0, 1, "aws", "a")


def test_memory_requests_keep_exactly_the_offers_that_hold_it(raw):
    memory = {name: meta["memory_gb"] for name, meta in raw["gpus"].items()}
    want = {o["instance"] for o in raw["offers"] if memory[o["gpu"]] * o["count"] >= 100}
    assert {r.instance for r in offers.rank(None, None, total_memory_gb=100)} == want
    per_gpu = {o["instance"] for o in raw["offers"] if memory[o["gpu"]] >= 40 and o["cloud"] in ("aws", "gcp")}
    assert {r.instance for r in offers.rank(None, None, min_memory_gb_per_gpu=40, clouds=["aws", "gcp"])} == per_gpu
    assert {r.gpu for r in offers.rank("H100-80GB", None)} == {"H100"}
    assert {r.gpu for r in offers.rank(None, None, allowed_gpus=["t4", "l4"])} == {"T4", "L4"}


@pytest.mark.parametrize("typo, first", [("A10O", "A10G"), ("H10", "H100"), ("a100-80", "A100-80GB"), ("L5", "L4")])
def test_unknown_gpu_suggests_the_closest_names(typo, first):
    with pytest.raises(InputError) as err:
        offers.resolve_gpu(typo)
    assert err.value.exit_code == 2 and err.value.what == f"unknown GPU {typo!r}"
    assert err.value.fix.startswith(f"did you mean {first}")
    assert "T4, L4, A10G, A100-40GB, A100-80GB, H100" in err.value.fix


def test_unknown_cloud_and_bad_counts_are_input_errors():
    with pytest.raises(InputError, match="did you mean gcp"):
        offers.rank("L4", None, clouds=["aws", "gpc"])
    for spec in ("A100:0", "A100:-1", "A100:x", "A100:1.5", ":8"):
        with pytest.raises(InputError):
            offers.parse_gpu_spec(spec)
    with pytest.raises(InputError):
        offers.rank("L4", 0)
    assert offers.parse_gpu_spec("a100:8") == offers.GpuRequest(gpu="A100-40GB", count=8)
    assert offers.parse_gpu_spec("H100") == offers.GpuRequest(gpu="H100")
    assert offers.parse_gpu_spec("24GB") == offers.GpuRequest(total_memory_gb=24)
    assert offers.parse_gpu_spec("A100-80GB") == offers.GpuRequest(gpu="A100-80GB")  # a name, not a memory


def test_nothing_fits_names_what_is_offered_instead():
    assert offers.rank("A100", 3) == []
    err = offers.nothing_fits(offers.GpuRequest(gpu="A100-40GB", count=3), None)
    assert "3 x A100-40GB" in err.what and err.fix.endswith("1, 8")
    err = offers.nothing_fits(offers.GpuRequest(gpu="A10G", count=1), ["gcp"])
    assert "A10G" in err.what and "other clouds" in err.fix


def test_finetune_estimate_matches_the_hand_computed_figure(raw):
    a10g = offers.rank("A10G", 1, clouds=["aws"])[0]
    price, peak = raw["offers"][[o["instance"] for o in raw["offers"]].index("ml.g5.xlarge")]["on_demand"], 70.0
    assert raw["gpus"]["A10G"]["bf16_tflops"] == peak
    est = offers.estimate_finetune_cost(8e9, 10_000_000, "qlora", a10g, False, 2, 0.4, max_runtime_s=10 * 3600)
    # 4 x 8e9 x 1e7 x 2 = 6.4e17 FLOPs; / (70e12 x 1 x 0.4) = 22857.14 s = 6.3492 h; x $1.408 = $8.9397
    assert est.flops == pytest.approx(6.4e17)
    assert est.hours == pytest.approx(6.4e17 / (70e12 * 0.4) / 3600) == pytest.approx(6.3492, abs=1e-4)
    assert est.usd == pytest.approx(6.3492 * price, abs=1e-3) == pytest.approx(8.9397, abs=1e-3)
    assert est.upper_bound_usd == pytest.approx(10 * price) and not est.exceeds_max_runtime
    full = offers.estimate_finetune_cost(8e9, 10_000_000, "full", a10g, False, 2, 0.4, max_runtime_s=3600)
    assert full.hours == pytest.approx(1.5 * est.hours) and full.exceeds_max_runtime
    spot = offers.estimate_finetune_cost(8e9, 10_000_000, "lora", a10g, True, 2, 0.4)
    assert spot.usd == pytest.approx(est.hours * a10g.spot_hourly) and spot.hourly_usd == a10g.spot_hourly
    eight = offers.rank("A10G", 8, clouds=["aws"])[0]
    assert offers.estimate_finetune_cost(8e9, 10_000_000, "qlora", eight, False, 2, 0.4).hours == \
        pytest.approx(est.hours / 8)


@pytest.mark.parametrize("kwargs", [{"params": 0}, {"tokens": -1}, {"epochs": 0}, {"mfu": 1.5}, {"mfu": 0},
                                    {"method": "dora"}])
def test_estimate_refuses_bad_inputs(kwargs):
    args = {"params": 1e9, "tokens": 1000, "method": "lora", "offer": offers.rank("T4", 1)[0], "spot": False,
            "epochs": 1, **kwargs}
    with pytest.raises(InputError):
        offers.estimate_finetune_cost(**args)


def test_every_gpu_has_a_dense_bf16_peak_with_one_note(raw):
    datasheet_dense = {"T4": 65, "L4": 121, "A100-40GB": 312, "A100-80GB": 312, "H100": 989}  # NVIDIA sheets / 2
    for name, meta in raw["gpus"].items():
        checked, unverified = (meta.get("checked") or {}).get("bf16_tflops"), (meta.get("unverified") or {}).get(
            "bf16_tflops")
        assert meta["bf16_tflops"] > 0 and (checked is None) != (unverified is None), name
        if checked:
            assert re.match(r"\d{4}-\d{2}-\d{2}: ", checked) and "https://" in checked, name
        else:
            assert len(unverified.split()) >= 8, name
        if name in datasheet_dense:
            assert meta["bf16_tflops"] == datasheet_dense[name], name
    assert raw["gpus"]["A10G"]["bf16_tflops"] < 125  # not the A10's datasheet figure


def test_choose_offer_picks_the_cheapest_fitting_allowed_gpu(raw):
    aws = {o["instance"]: o for o in raw["offers"] if o["cloud"] == "aws" and o["count"] == 1}
    l4, a10g = aws["ml.g6.xlarge"], aws["ml.g5.xlarge"]
    assert l4["on_demand"] < a10g["on_demand"] and l4["spot"] < a10g["spot"]
    assert offers.choose_offer("aws", ["T4", "L4", "A10G"], 20, False, None).instance == "ml.g6.xlarge"
    assert offers.choose_offer("aws", ["T4", "A10G"], 20, True, 1).instance == "ml.g5.xlarge"
    gcp = offers.choose_offer("gcp", ["T4", "L4"], 12, False, None)  # T4 $0.73 beats L4 $0.854
    assert (gcp.gpu, gcp.instance) == ("T4", "n1-standard-8")
    fours = sorted((o for o in raw["offers"] if o["cloud"] == "aws" and o["count"] == 4 and o["gpu"] in ("T4", "L4")),
                   key=lambda o: o["on_demand"])
    assert offers.choose_offer("aws", ["T4", "L4"], 12, False, 4).instance == fours[0]["instance"]


def test_choose_offer_when_nothing_fits_says_what_and_how_to_fix():
    with pytest.raises(InputError) as err:
        offers.choose_offer("aws", ["T4", "L4"], 30, False, None)
    assert err.value.exit_code == 2
    assert "30.0 GB per GPU" in err.value.what and "L4 (24 GB)" in err.value.what
    assert err.value.where == "stack config allowedGpus"
    assert "allowedGpus" in err.value.fix and "--method qlora" in err.value.fix and "--max-seq-length" in err.value.fix
    assert "A100-40GB" in err.value.fix  # the cheapest aws GPU with 30 GB each (8 x A100-40GB)


def test_check_budget_refuses_above_the_limit_with_exit_3():
    offer = offers.rank("A10G", 1, clouds=["aws"])[0]
    est = offers.estimate_finetune_cost(8e9, 10_000_000, "qlora", offer, False, 2, 0.4)
    offers.check_budget(est, None)
    offers.check_budget(est, 9.0)  # 8.94 is under 9
    with pytest.raises(offers.CostLimitError) as err:
        offers.check_budget(est, 5.0)
    assert isinstance(err.value, StackwiseError) and err.value.exit_code == 3
    assert "$8.94" in err.value.what and "$5.00" in err.value.what
    assert err.value.where == "stack config maxJobCostUsd" and "maxJobCostUsd" in err.value.fix
