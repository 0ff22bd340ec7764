"""The GPU catalog: portable names to each cloud's instance types, dated prices, clear errors."""

from __future__ import annotations

import re

import pytest

from stackwise import catalog
from stackwise.errors import ConfigError


def test_every_offer_is_dated_sourced_and_priced():
    offers = catalog.catalog().offers
    assert {o.cloud for o in offers} == {"aws", "gcp", "azure"}
    for o in offers:
        assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", o.as_of), o
        assert "https://" in o.source, o
        assert 0 < o.spot_hourly < o.on_demand_hourly, o
        assert o.gpu in catalog.gpu_names()
    for o in catalog.offers("aws"):
        assert o.instance.startswith("ml."), o
    for o in catalog.offers("gcp"):
        assert o.accelerator and o.accelerator.startswith("NVIDIA_"), o
    for o in catalog.offers("azure"):
        assert o.instance.startswith("Standard_N"), o


def test_every_price_is_checked_with_date_and_source_or_says_why_not():
    for o in catalog.catalog().offers:
        for figure in ("on_demand", "spot"):
            checked, unverified = o.checked.get(figure), o.unverified.get(figure)
            assert (checked is None) != (unverified is None), f"{o.instance} {figure}: checked or unverified, not both"
            if checked is not None:
                assert re.match(r"\d{4}-\d{2}-\d{2}: ", checked), f"{o.instance} {figure}: no check date: {checked}"
                assert "https://" in checked, f"{o.instance} {figure}: no source: {checked}"
            else:
                assert len(unverified.split()) >= 8, f"{o.instance} {figure}: give the reason: {unverified!r}"
        assert set(o.checked) | set(o.unverified) == {"on_demand", "spot"}, o.instance
        if "on_demand" in o.checked:  # the checked price is the one in the catalog, to the cent
            quoted = [float(p) for p in re.findall(r"\$(\d+\.\d+)", o.checked["on_demand"])]
            assert any(abs(p - o.on_demand_hourly) < 0.01 for p in quoted) or abs(sum(quoted) - o.on_demand_hourly) < 0.01, o
    assert not catalog.offer("L4", "aws").verified and catalog.offer("A10G", "aws").verified


def test_portable_names_map_to_each_clouds_instance():
    assert catalog.offer("A10G", "aws").instance == "ml.g5.xlarge"
    gcp = catalog.offer("l4", "gcp")  # case-insensitive
    assert (gcp.instance, gcp.accelerator, gcp.count) == ("g2-standard-8", "NVIDIA_L4", 1)
    assert catalog.offer("A100", "gcp").gpu == "A100-40GB"  # alias
    assert catalog.offer("H100", "azure", 8).instance == "Standard_ND96isr_H100_v5"
    assert catalog.offer("T4", "aws").monthly(2) == round(0.736 * 2 * 730, 2)


def test_unknown_gpu_lists_the_known_ones():
    with pytest.raises(ConfigError) as err:
        catalog.offer("V100", "aws")
    assert "unknown GPU 'V100'" in err.value.what
    assert "A10G" in err.value.fix and "H100" in err.value.fix


def test_gpu_a_cloud_does_not_offer_lists_what_it_offers():
    with pytest.raises(ConfigError) as err:
        catalog.offer("A10G", "gcp")
    assert err.value.what == "gcp does not offer the GPU A10G"
    assert "L4 x 1/4/8" in err.value.fix and "T4" in err.value.fix


def test_count_not_offered_lists_the_counts():
    with pytest.raises(ConfigError) as err:
        catalog.offer("A10G", "aws", 2)
    assert "2 x A10G" in err.value.what
    assert err.value.fix.endswith("1, 4, 8")


def test_catalog_loads_without_pulumi(tmp_path):
    import subprocess
    import sys

    code = ("import sys, stackwise.catalog as c; c.offer('T4', 'aws');"
            "assert not any(m.split('.')[0] == 'pulumi' for m in sys.modules), 'pulumi loaded'")
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
