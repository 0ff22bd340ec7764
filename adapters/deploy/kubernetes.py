"""Endpoints on a Kubernetes cluster: each model version a Deployment of the serving image, a
traffic split with a Gateway API HTTPRoute, autoscaling with a KEDA ScaledObject
(docs/kubernetes.md says what the cluster needs).

Per version, a Deployment of the serving image, its Service and (autoscaled) a KEDA ScaledObject;
per endpoint, a Service and (with the stack's `gateway`) an HTTPRoute whose weights are the split:
adapters/deploy/kubernetes_manifests.py builds them as data and says what each holds.

`describe` reads the Deployments (the client's V1Deployment models: `deployment_state`), the
HTTPRoute's weights, or without one the endpoint Service's selector. `deploy` is idempotent (a
version whose Deployment exists is not created again); a version whose Service or ScaledObject
cannot be created is deleted again, with everything else this call created, before the error is
raised. `undeploy` needs 0 % first, drops the version from the HTTPRoute, then deletes its
ScaledObject, Service and Deployment. Request builders are pure functions of the stack and target.
"""

from __future__ import annotations

from typing import Any

from stackwise.adapters.clouds import kubernetes as kube
from stackwise.adapters.clouds.common import Retry, with_retries
from stackwise.adapters.clouds.kubernetes import label_value
from stackwise.deploy import DeployBackend, Deployment, DeployTarget, Variant
from stackwise.errors import ConfigError, SpecError
from stackwise.serve_targets import rag_deploy_environment

from .kubernetes_manifests import (CONTAINER, ENDPOINT_LABEL, ENV_BASE, ENV_MODEL, ENV_URI, ENV_VERSION, GATEWAY_GROUP,
                                   GATEWAY_KEY, GATEWAY_VERSION, MODEL_LABEL, ROUTES, SCALED_OBJECTS, VERSION_LABEL,
                                   endpoint_object_name, endpoint_selector, gateway_ref, route_manifest, route_shape,
                                   scaled_object_manifest, service_manifest, version_manifests,
                                   version_manifests_for_removal, version_name)

# -- states ----------------------------------------------------------------------------------------
def deployment_state(deployment: Any) -> str:
    """"ready", "updating", "creating" or "failed" of a V1Deployment (the client's model):
    failed when its rollout passed its progress deadline (Progressing False,
    ProgressDeadlineExceeded); ready when the controller has seen its latest spec and as many
    replicas are updated and available as it wants; creating while none was ever available in its
    first rollout; else updating."""
    spec, status, meta = deployment.spec, deployment.status, deployment.metadata
    conditions = {c.type: c for c in (status.conditions or [])} if status else {}
    progressing = conditions.get("Progressing")
    if progressing is not None and progressing.status == "False" and progressing.reason == "ProgressDeadlineExceeded":
        return "failed"
    desired = spec.replicas if spec is not None and spec.replicas is not None else 1
    available = (status.available_replicas or 0) if status else 0
    updated = (status.updated_replicas or 0) if status else 0
    observed = (status.observed_generation or 0) if status else 0
    if observed >= (meta.generation or 0) and available >= desired and updated >= desired:
        return "ready"
    once_available = progressing is not None and progressing.reason == "NewReplicaSetAvailable"
    return "creating" if available == 0 and not once_available else "updating"


def endpoint_state(states: list[str]) -> str:
    if not states:
        return "absent"
    if "failed" in states:
        return "failed"
    if all(s == "ready" for s in states):
        return "ready"
    return "creating" if all(s == "creating" for s in states) else "updating"


def _env(deployment: Any) -> dict[str, str]:
    containers = deployment.spec.template.spec.containers if deployment.spec and deployment.spec.template else []
    for container in containers or []:
        if container.name == CONTAINER:
            return {e.name: e.value or "" for e in container.env or []}
    return {}


class KubernetesDeploy(DeployBackend):
    """The stack's endpoints on its Kubernetes cluster; each version one Deployment (see the module)."""

    cloud = "kubernetes"

    def __init__(self, stack: Any, api_client: Any = None):
        super().__init__(stack)
        self._apis = kube.Apis(stack, api_client)
        self.retry = Retry()

    # -- endpoint ------------------------------------------------------------------------------------
    def endpoint_output(self, endpoint: str | None = None) -> Any:
        """A local stack (an on-premises cluster) exports no endpoints: it has one, `local`, serving the
        `serve` image beside its training image on CPU, with one replica."""
        if self.stack.is_local and not self.stack.outputs.endpoints:
            from stackwise.contract import EndpointOutput
            from stackwise.serving import DEFAULT_ENDPOINT

            if endpoint not in (None, DEFAULT_ENDPOINT):
                raise ConfigError(f"stack {self.stack.name!r} has no endpoint named {endpoint!r}",
                                  where=f"stack {self.stack.name}", fix=f"its endpoint is {DEFAULT_ENDPOINT!r}")
            return EndpointOutput(name=DEFAULT_ENDPOINT)
        return super().endpoint_output(endpoint)

    @property
    def namespace(self) -> str:
        return kube.cluster_outputs(self.stack).namespace

    # -- calls ---------------------------------------------------------------------------------------
    def _api(self, name: str) -> Any:
        return self._apis.get(name)

    def _call(self, what: str, method: str, *args: Any, api: str = "CoreV1Api", **kwargs: Any) -> Any:
        """One API call in the namespace, retried on 429/5xx; errors mapped by stackwise.adapters.clouds.kubernetes."""
        def once() -> Any:
            fn = getattr(self._api(api), method)
            return kube.call(lambda: fn(*args, **kwargs), what, stack=self.stack, namespace=self.namespace)

        return with_retries(once, self.retry, f"kubernetes: {what}")

    def _custom(self, verb: str, group: str, version: str, plural: str, *args: Any, what: str) -> Any:
        return self._call(what, f"{verb}_namespaced_custom_object", group, version, self.namespace, plural, *args,
                          api="CustomObjectsApi")

    def _route(self, name: str) -> dict[str, Any] | None:
        try:
            return self._custom("get", GATEWAY_GROUP, GATEWAY_VERSION, ROUTES, name, what=f"get HTTPRoute {name}")
        except kube.NotFound:
            return None

    def _service(self, name: str) -> Any:
        try:
            return self._call(f"get Service {name}", "read_namespaced_service", name, self.namespace)
        except kube.NotFound:
            return None

    def _deployments(self, endpoint: str) -> list[Any]:
        selector = ",".join(f"{k}={v}" for k, v in {**kube.MANAGED_BY, ENDPOINT_LABEL: label_value(endpoint)}.items())
        found = self._call(f"list Deployments of endpoint {endpoint}", "list_namespaced_deployment", self.namespace,
                           label_selector=selector, api="AppsV1Api").items
        return sorted(found, key=lambda d: d.metadata.name)

    # -- reading -------------------------------------------------------------------------------------
    def describe(self, endpoint: str | None = None) -> Deployment:
        out = self.endpoint_output(endpoint)
        front = endpoint_object_name(out.name)
        url = out.url or f"http://{front}.{self.namespace}.svc.cluster.local/v1"
        deployments = self._deployments(out.name)
        if not deployments:
            return Deployment(endpoint=out.name, cloud=self.cloud, state="absent", url=url)
        weights = self._weights(out.name, deployments)
        variants = []
        for dep in deployments:
            env, labels = _env(dep), dep.metadata.labels or {}
            variants.append(Variant(model=env.get(ENV_MODEL) or labels.get(MODEL_LABEL, "?"),
                                    version=env.get(ENV_VERSION) or labels.get(VERSION_LABEL, "?"),
                                    traffic=weights.get(dep.metadata.name, 0), state=deployment_state(dep),
                                    name=dep.metadata.name, artifact_uri=env.get(ENV_URI) or None,
                                    base_model=env.get(ENV_BASE) or None))
        variants.sort(key=lambda v: (v.model, int(v.version) if v.version.isdigit() else 0, v.version))
        return Deployment(endpoint=out.name, cloud=self.cloud, state=endpoint_state([v.state for v in variants]),
                          url=url, variants=variants)

    def _weights(self, endpoint: str, deployments: list[Any]) -> dict[str, int]:
        """Version object name -> percent: the HTTPRoute's weights, else the endpoint Service's one version."""
        front = endpoint_object_name(endpoint)
        if gateway_ref(self.stack) is not None:
            route = self._route(front)
            if route is not None:
                refs = [ref for rule in (route.get("spec") or {}).get("rules") or []
                        for ref in rule.get("backendRefs") or []]
                return {ref["name"]: int(ref.get("weight", 1)) for ref in refs}
        service = self._service(front)
        selector = dict(service.spec.selector or {}) if service is not None and service.spec else {}
        if MODEL_LABEL in selector and VERSION_LABEL in selector:
            for dep in deployments:
                if all((dep.metadata.labels or {}).get(k) == v for k, v in selector.items()):
                    return {dep.metadata.name: 100}
        return {}

    # -- writing -------------------------------------------------------------------------------------
    def deploy(self, targets: list[DeployTarget], traffic: dict[str, int], endpoint: str | None = None) -> Deployment:
        out = self.endpoint_output(endpoint)
        current = self.describe(out.name)
        new, split = self.plan(current, targets, traffic)
        gateway = gateway_ref(self.stack)
        primary = next((key for key, pct in split.items() if pct == 100), None)
        if gateway is None and primary is None:
            raise SpecError(
                "a traffic split between versions needs a Gateway API Gateway, and this stack names none: "
                + ", ".join(f"{k}={v}" for k, v in split.items() if v),
                where=f"traffic; {GATEWAY_KEY} of stack {self.stack.name}",
                fix=f"set {GATEWAY_KEY}: NAMESPACE/NAME (docs/kubernetes.md), or send all traffic to one "
                    "version, e.g. --traffic " + next(iter(split)) + "=100")
        # Every manifest is built (and checked) before the first call.
        plans = [version_manifests(self.stack, out, t, rag_deploy_environment(self.stack, t)) for t in new]
        made: list[dict[str, Any]] = []
        try:
            for target, manifests in zip(new, plans):
                for manifest in manifests:
                    self._create(manifest, target, made)
            self._route_traffic(out, current, new, split, primary, made)
        except BaseException:
            self._remove(made)  # nothing left half-created
            raise
        return self.describe(out.name)

    def _create(self, manifest: dict[str, Any], target: Any, made: list[dict[str, Any]]) -> None:
        """Create one object of a version; an existing one of this version (left by an interrupted
        deploy) is brought to `manifest`; one of the same name that is not this version's is a ConfigError."""
        made.append(manifest)  # removed again if anything of this deploy fails, also when it existed
        try:
            self._send("create", manifest)
            return
        except kube.Conflict:
            pass
        existing = self._send("get", manifest)
        try:
            self._check_owner(manifest, existing, (ENDPOINT_LABEL, MODEL_LABEL, VERSION_LABEL), target.key)
        except ConfigError:
            made.pop()  # not ours: never deleted
            raise
        if manifest["kind"] != "Deployment":  # a Deployment's selector is immutable; this version's runs already
            self._send("patch", manifest, {"metadata": {"labels": manifest["metadata"]["labels"]},
                                           "spec": manifest["spec"]})

    def _check_owner(self, manifest: dict[str, Any], existing: Any, keys: tuple[str, ...], whose: str) -> None:
        """ConfigError unless `existing` (a dict or a client model) carries `manifest`'s `keys` labels and
        stackwise's managed-by: an object of the same name made by someone else is never taken over."""
        if isinstance(existing, dict):
            labels = (existing.get("metadata") or {}).get("labels") or {}
        else:
            labels = existing.metadata.labels or {}
        wanted = manifest["metadata"]["labels"]
        if all(labels.get(k) == wanted[k] for k in (*keys, *kube.MANAGED_BY)):
            return
        kind, name = manifest["kind"], manifest["metadata"]["name"]
        raise ConfigError(f"a {kind} named {name} already exists in namespace {self.namespace} and is not "
                          f"stackwise's {whose} of endpoint {wanted[ENDPOINT_LABEL]}",
                          where=f"namespace {self.namespace}, {kind} {name}",
                          fix=f"delete or rename that {kind} (kubectl delete {kind.lower()} {name} -n "
                              f"{self.namespace}), or deploy to another endpoint")

    def _send(self, verb: str, manifest: dict[str, Any], body: Any = None) -> Any:
        """create / get / patch / delete one manifest's object; returns the object as a dict."""
        kind, name = manifest["kind"], manifest["metadata"]["name"]
        what = f"{verb} {kind} {name}"
        if kind in ("HTTPRoute", "ScaledObject"):
            group, version = manifest["apiVersion"].split("/")
            plural = ROUTES if kind == "HTTPRoute" else SCALED_OBJECTS
            if verb == "create":
                return self._custom("create", group, version, plural, manifest, what=what)
            if verb == "delete":
                return self._custom("delete", group, version, plural, name, what=what)
            return self._custom(verb, group, version, plural, name, *([body] if verb == "patch" else []), what=what)
        api, noun = ("AppsV1Api", "deployment") if kind == "Deployment" else ("CoreV1Api", "service")
        method = {"create": f"create_namespaced_{noun}", "get": f"read_namespaced_{noun}",
                  "patch": f"patch_namespaced_{noun}", "delete": f"delete_namespaced_{noun}"}[verb]
        if verb == "create":
            answer = self._call(what, method, self.namespace, manifest, api=api)
        elif verb == "patch":
            answer = self._call(what, method, name, self.namespace, body, api=api)
        elif verb == "delete":
            answer = self._call(what, method, name, self.namespace, api=api, propagation_policy="Background")
        else:
            answer = self._call(what, method, name, self.namespace, api=api)
        return self._apis.client.sanitize_for_serialization(answer) if verb != "delete" else answer

    def _remove(self, manifests: list[dict[str, Any]]) -> None:
        """Delete the objects of `manifests`, last first, ignoring what is gone or cannot be deleted (the
        error that made this necessary is the one raised)."""
        for manifest in reversed(manifests):
            try:
                self._send("delete", manifest)
            except Exception:  # noqa: BLE001 - best effort: the first error is the one that matters
                pass

    def _route_traffic(self, out: Any, current: Deployment, new: list[DeployTarget], split: dict[str, int],
                       primary: str | None, made: list[dict[str, Any]]) -> None:
        """Apply `split`: the HTTPRoute's weights (with a gateway) or the endpoint Service's selector."""
        front = endpoint_object_name(out.name)
        versions = {v.key: v for v in current.variants}
        versions.update({t.key: t for t in new})
        names = {key: version_name(out.name, v.model, v.version) for key, v in versions.items()}
        gateway = gateway_ref(self.stack) is not None
        selector = endpoint_selector(out.name, None if gateway else versions[primary])
        service = self._service(front)
        wanted = service_manifest(self.stack, front, out.name, selector)
        if service is None:
            self._create_front(wanted, made)
        else:
            self._check_owner(wanted, service, (ENDPOINT_LABEL,), "Service")
            if dict(service.spec.selector or {}) != selector:
                gone = {k: None for k in (service.spec.selector or {}) if k not in selector}
                self._send("patch", wanted, {"spec": {"selector": {**gone, **selector}}})
        if not gateway:
            return
        route = route_manifest(self.stack, out, [(names[key], pct) for key, pct in split.items()])
        existing = self._route(front)
        if existing is None:
            self._create_front(route, made)
            return
        self._check_owner(route, existing, (ENDPOINT_LABEL,), "HTTPRoute")
        if route_shape(existing) != route_shape(route):  # weights alone: this one PATCH
            self._send("patch", route, {"spec": {**route["spec"], "hostnames": route["spec"].get("hostnames")}})

    def _create_front(self, manifest: dict[str, Any], made: list[dict[str, Any]]) -> None:
        """Create the endpoint Service or HTTPRoute (created by a concurrent deploy meanwhile: patched)."""
        try:
            self._send("create", manifest)
            made.append(manifest)
        except kube.Conflict:
            self._check_owner(manifest, self._send("get", manifest), (ENDPOINT_LABEL,), manifest["kind"])
            self._send("patch", manifest, {"spec": manifest["spec"]})

    def undeploy(self, key: str, endpoint: str | None = None) -> Deployment:
        out = self.endpoint_output(endpoint)
        current = self.describe(out.name)
        variant = self.check_removable(current, key)
        if variant is None:
            return current
        if gateway_ref(self.stack) is not None:
            rest = [(v.name, v.traffic) for v in current.variants if v.key != key]
            route = route_manifest(self.stack, out, rest)
            if self._route(route["metadata"]["name"]) is not None:  # first: no route to a Service being deleted
                self._send("patch", route, {"spec": {"rules": route["spec"]["rules"]}})
        for manifest in version_manifests_for_removal(self.stack, out, variant):
            try:
                self._send("delete", manifest)  # ScaledObject first: KEDA never scales what is being deleted
            except kube.NotFound:
                pass
            except ConfigError:  # forbidden: a stack that never autoscaled may have no rights on ScaledObjects
                if manifest["kind"] != "ScaledObject" or scaled_object_manifest(self.stack, out, variant):
                    raise
        return self.describe(out.name)
