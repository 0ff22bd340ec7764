"""The local stack's endpoint: its versions and split are the deploy state under the state folder
(`stackwise.serving.write_state`: one JSON file per endpoint, written atomically), which the server
`stackwise serve` runs (`stackwise.serving.create_app`) rereads on change: a deploy or a change of
weights takes effect on the next request, with no restart."""

from __future__ import annotations

from typing import Any

from stackwise.contract import EndpointOutput
from stackwise.deploy import DeployBackend, Deployment, DeployTarget, Variant, variant_name
from stackwise.errors import ConfigError, SpecError
from stackwise.serving import DEFAULT_ENDPOINT, DEFAULT_PORT, local_folder, read_state, write_state


class LocalDeploy(DeployBackend):
    """The local endpoint: deploy state under the state folder, served by `stackwise serve`."""

    cloud = "local"

    def endpoint_output(self, endpoint: str | None = None) -> Any:
        if self.stack.outputs.endpoints:
            return super().endpoint_output(endpoint)
        # The local stack always has one endpoint; its URL is where `stackwise serve` listens by default.
        if endpoint not in (None, DEFAULT_ENDPOINT):
            raise ConfigError(f"stack {self.stack.name!r} has no endpoint named {endpoint!r}",
                              where=f"stack {self.stack.name}", fix=f"the local stack's endpoint is {DEFAULT_ENDPOINT!r}")
        return EndpointOutput(name=DEFAULT_ENDPOINT, url=f"http://127.0.0.1:{DEFAULT_PORT}/v1")

    def describe(self, endpoint: str | None = None) -> Deployment:
        out = self.endpoint_output(endpoint)
        dep = read_state(out.name)
        dep.url = dep.url or out.url
        return dep

    @staticmethod
    def _check_artifact(target: DeployTarget) -> None:
        folder = local_folder(target.artifact_uri)
        if folder is None or not folder.is_dir():
            raise SpecError(f"{target.key} lives at {target.artifact_uri}, which is not a folder on this machine",
                            where=f"model registry, {target.key} source",
                            fix="deploy versions of the local stack's registry (`stackwise models show NAME`)")
        if not any((folder / f).is_file() for f in ("config.json", "adapter_config.json", "rag.yaml")):
            raise SpecError(f"{target.key} at {folder} is not a saved model or adapter (no config.json)",
                            where=str(folder), fix="register a folder written by save_pretrained")

    def deploy(self, targets: list[DeployTarget], traffic: dict[str, int], endpoint: str | None = None) -> Deployment:
        current = self.describe(endpoint)
        new, split = self.plan(current, targets, traffic)
        for target in new:
            self._check_artifact(target)
        variants = [Variant(model=v.model, version=v.version, traffic=split[v.key], state="ready", name=v.name,
                            artifact_uri=v.artifact_uri, base_model=v.base_model) for v in current.variants]
        variants += [Variant(model=t.model, version=t.version, traffic=split[t.key], state="ready",
                             name=variant_name(t.model, t.version), artifact_uri=t.artifact_uri,
                             base_model=t.base_model) for t in new]
        dep = Deployment(endpoint=current.endpoint, cloud="local", state="ready", url=current.url, variants=variants)
        if new or dep.traffic != current.traffic or current.state == "absent":
            write_state(dep)
        return dep

    def undeploy(self, key: str, endpoint: str | None = None) -> Deployment:
        current = self.describe(endpoint)
        if self.check_removable(current, key) is None:
            return current
        current.variants = [v for v in current.variants if v.key != key]
        write_state(current)
        return current
