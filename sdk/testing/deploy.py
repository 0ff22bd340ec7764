"""The abstract deploy contract. The local backend and every cloud backend mix it in:

    class TestMyDeploy(DeployContract):
        @pytest.fixture
        def driver(self, ...):
            return MyDriver(...)        # a DeployDriver for this backend

A `DeployDriver` gives the suite a backend on a fresh endpoint, deploy targets (registered
versions whose artifacts the backend can read), a way to let the endpoint finish an update, and
a count of what the backend created on the cloud (models, deployed models). The suite checks
behaviour through `DeployBackend` only: an absent endpoint, a first deploy at 100%, an A/B
split, a traffic-only change that creates nothing, idempotent redeploys, refused splits (nothing
created), undeploy rules, and a stack without an endpoint.
"""

from __future__ import annotations

from typing import Any

import pytest

from stackwise.deploy import DeployBackend, DeployTarget
from stackwise.errors import ConfigError, SpecError


class DeployDriver:
    """What a backend's tests provide to the contract suite."""

    def backend(self) -> DeployBackend:
        raise NotImplementedError

    def backend_without_endpoint(self) -> DeployBackend:
        """A backend on a stack that exports no endpoint."""
        raise NotImplementedError

    def target(self, version: int) -> DeployTarget:
        """A registered version (`chat:<version>`) the backend can deploy."""
        raise NotImplementedError

    def settle(self, backend: DeployBackend) -> None:
        """Let an endpoint update finish (a cloud emulator moves its state)."""

    def created(self) -> int:
        """How many models / deployed models the backend has created so far on the cloud."""
        raise NotImplementedError


class DeployContract:
    """Mix into a test class that provides the `driver` fixture."""

    @pytest.fixture
    def backend(self, driver: DeployDriver) -> DeployBackend:
        return driver.backend()

    def _deploy(self, driver: DeployDriver, backend: DeployBackend, targets: list[int], traffic: dict[int, int]) -> Any:
        result = backend.deploy([driver.target(v) for v in targets], {f"chat:{v}": p for v, p in traffic.items()})
        driver.settle(backend)
        return result

    def test_a_fresh_endpoint_is_absent(self, backend: DeployBackend) -> None:
        dep = backend.describe()
        assert dep.state == "absent" and dep.variants == []
        assert dep.endpoint == backend.endpoint_name()

    def test_first_deploy_serves_the_version_at_100(self, driver: DeployDriver, backend: DeployBackend) -> None:
        result = self._deploy(driver, backend, [1], {1: 100})
        assert result.traffic == {"chat:1": 100}
        dep = backend.describe()
        assert dep.state == "ready" and dep.traffic == {"chat:1": 100}
        variant = dep.variant("chat:1")
        assert variant is not None and variant.model == "chat" and variant.version == "1" and variant.name

    def test_redeploying_the_same_version_creates_nothing(self, driver: DeployDriver, backend: DeployBackend) -> None:
        self._deploy(driver, backend, [1], {1: 100})
        made = driver.created()
        again = self._deploy(driver, backend, [1], {1: 100})
        assert driver.created() == made
        assert again.traffic == {"chat:1": 100} and len(backend.describe().variants) == 1

    def test_a_second_version_gets_its_share(self, driver: DeployDriver, backend: DeployBackend) -> None:
        self._deploy(driver, backend, [1], {1: 100})
        self._deploy(driver, backend, [2], {1: 90, 2: 10})
        dep = backend.describe()
        assert dep.traffic == {"chat:1": 90, "chat:2": 10} and dep.state == "ready"
        assert len({v.name for v in dep.variants}) == 2

    def test_a_traffic_only_change_creates_nothing(self, driver: DeployDriver, backend: DeployBackend) -> None:
        self._deploy(driver, backend, [1], {1: 100})
        self._deploy(driver, backend, [2], {1: 90, 2: 10})
        made = driver.created()
        names = {v.key: v.name for v in backend.describe().variants}
        self._deploy(driver, backend, [2], {1: 30, 2: 70})
        dep = backend.describe()
        assert dep.traffic == {"chat:1": 30, "chat:2": 70}
        assert driver.created() == made and {v.key: v.name for v in dep.variants} == names

    def test_versions_left_out_of_the_split_get_zero(self, driver: DeployDriver, backend: DeployBackend) -> None:
        self._deploy(driver, backend, [1], {1: 100})
        self._deploy(driver, backend, [2], {2: 100})
        assert backend.describe().traffic == {"chat:1": 0, "chat:2": 100}

    @pytest.mark.parametrize("traffic, message", [
        ({"chat:1": 60, "chat:2": 30}, "sum to 90"),
        ({"chat:1": 100, "chat:9": 0}, "chat:9"),
        ({"chat:1": 50.5, "chat:2": 49.5}, "integer"),
        ({}, "empty"),
    ])
    def test_a_bad_split_is_refused_before_anything_is_created(self, driver: DeployDriver, backend: DeployBackend,
                                                               traffic: dict[str, Any], message: str) -> None:
        made = driver.created()
        with pytest.raises(SpecError, match=message):
            backend.deploy([driver.target(1), driver.target(2)], traffic)
        assert driver.created() == made and backend.describe().state == "absent"

    def test_undeploy_needs_zero_traffic_and_is_idempotent(self, driver: DeployDriver, backend: DeployBackend) -> None:
        self._deploy(driver, backend, [1], {1: 100})
        self._deploy(driver, backend, [2], {1: 50, 2: 50})
        with pytest.raises(SpecError, match="carries 50%"):
            backend.undeploy("chat:1")
        self._deploy(driver, backend, [2], {2: 100})
        backend.undeploy("chat:1")
        driver.settle(backend)
        assert backend.describe().traffic == {"chat:2": 100}
        backend.undeploy("chat:1")  # gone already: a no-op
        assert backend.describe().traffic == {"chat:2": 100}

    def test_a_stack_without_an_endpoint_says_how_to_add_one(self, driver: DeployDriver) -> None:
        with pytest.raises(ConfigError, match="no inference endpoint|no endpoint named"):
            driver.backend_without_endpoint().describe()
