"""Kubernetes: the one module that imports the `kubernetes` client for the Kubernetes compute and
deploy adapters (adapters/compute/kubernetes.py, adapters/deploy/kubernetes.py): reaching the stack's
cluster, mapping the API's answers onto stackwise's errors (`call`, by HTTP status), and the names
and labels every stackwise object on a cluster carries (`label_value`, `dns_label`).

The cluster is reached with the submitting machine's kubeconfig: `stackwise:kubernetes.kubeconfig`
(else `$KUBECONFIG`, else `~/.kube/config`) and `stackwise:kubernetes.context` (else its current
context); inside a pod with none of them, the pod's service account (in-cluster config). Nothing
here imports the `kubernetes` client at module level.

Errors, each with what, where and how to fix it (exit 2): no kubeconfig, an unknown context, a
cluster that cannot be reached, 401 (credentials), 403 (the identity may not do this in the
namespace), 422 (the API server refused a manifest). 429 and 5xx answers are `TransientError`s,
retried by the caller; 404 is `NotFound` for the caller to handle. A kubeconfig's tokens and
certificates never appear in a message.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from stackwise.errors import CloudError, ConfigError, CredentialsError, SpecError, TransientError

T = TypeVar("T")

#: The Kubernetes version every generated manifest targets and is validated against
#: (kubernetes-validate's schemas, in the tests). Indexed Jobs, pod failure policies and
#: `managedBy` are GA in it.
KUBERNETES_VERSION = "1.33.0"
#: Prefix of stackwise's labels and annotations.
DOMAIN = "stackwise.dev"
MANAGED_BY = {"app.kubernetes.io/managed-by": "stackwise"}
#: Kueue: the label that submits a workload to a LocalQueue (kueue.x-k8s.io/queue-name).
KUEUE_QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
GPU_RESOURCE = "nvidia.com/gpu"
#: GPU feature discovery's `nvidia.com/gpu.product` value of each catalog GPU (the default node label).
GFD_PRODUCTS = {"T4": "Tesla-T4", "L4": "NVIDIA-L4", "A10G": "NVIDIA-A10G", "A100-40GB": "NVIDIA-A100-SXM4-40GB",
                "A100-80GB": "NVIDIA-A100-SXM4-80GB", "H100": "NVIDIA-H100-80GB-HBM3"}

_SETUP_FIX = ("write a kubeconfig for the cluster (EKS: `aws eks update-kubeconfig --name CLUSTER`; GKE: "
              "`gcloud container clusters get-credentials CLUSTER`; AKS: `az aks get-credentials -n CLUSTER -g GROUP`), "
              "or point stackwise:kubernetes.kubeconfig at one")


_LABEL = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")


def _digest(text: str, n: int = 6) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:n]


def label_value(text: str) -> str:
    """`text` as a label value: itself when valid (63 characters of [A-Za-z0-9._-], alphanumeric at both
    ends), else a cleaned head and 6 hex digits of it."""
    if len(text) <= 63 and _LABEL.fullmatch(text):
        return text
    clean = re.sub(r"[^A-Za-z0-9_.-]+", "-", text)[:56].strip("-_.")
    return f"{clean}-{_digest(text)}" if clean else _digest(text)


def dns_label(text: str, limit: int = 63) -> str:
    """`text` as a DNS-1035 label (a letter first; lowercase letters, digits, '-'; at most `limit`):
    itself when it already is one, else a cleaned head and 6 hex digits of `text`, so two different
    texts never share a name."""
    clean = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    if clean == text and len(clean) <= limit and clean[:1].isalpha():
        return clean
    if not clean[:1].isalpha():
        clean = f"x-{clean}".rstrip("-")
    return clean[:limit - 7].rstrip("-") + "-" + _digest(text)


class NotFound(Exception):
    """The API answered 404 for this object."""


class Conflict(Exception):
    """The API answered 409: the object exists already (create) or changed meanwhile (update)."""


def settings(stack: Any) -> dict[str, Any]:
    """The stack file's `stackwise:kubernetes` mapping (empty when absent)."""
    value = stack.config.get("kubernetes") or {}
    return value if isinstance(value, dict) else {}


def cluster_outputs(stack: Any) -> Any:
    """The stack's `kubernetes` outputs (namespace, service account, queue, node labels), required."""
    found = stack.outputs.kubernetes
    if found is None:
        raise ConfigError(
            f"stack {stack.name!r} runs on Kubernetes but its outputs have no kubernetes section",
            where=f"stack outputs of {stack.name!r}: kubernetes",
            fix="run `pulumi up` with stackwise:compute {kind: kubernetes} and then `stackwise sync`, "
            "or add the section to the outputs file",
        )
    return found


def node_selector(gpu: str | None, spot: bool, cluster: Any, stack: Any) -> dict[str, str]:
    """The node selector of a pod on `gpu` (None: any node), on spot nodes when `spot`, from the stack's
    `kubernetes` outputs (`cluster`); a GPU the stack maps to no node label is a ConfigError."""
    selector: dict[str, str] = {}
    if gpu:
        value = cluster.gpu_values.get(gpu) or (GFD_PRODUCTS.get(gpu) if cluster.gpu_label == "nvidia.com/gpu.product"
                                                else None)
        if value is None:
            raise ConfigError(
                f"stack {stack.name!r} does not say which nodes carry a {gpu}",
                where=f"stack outputs: kubernetes.gpu_values (label {cluster.gpu_label})",
                fix=f"add {gpu}: <value of {cluster.gpu_label} on those nodes> to stackwise:kubernetes.gpuValues")
        selector[cluster.gpu_label] = value
    if spot:
        selector.update(cluster.spot_selector)
    return selector


def kubeconfig_path(stack: Any) -> tuple[str | None, str]:
    """(the kubeconfig file to read, where its name came from); (None, ...) when none exists."""
    configured = settings(stack).get("kubeconfig")
    if configured:
        return str(Path(str(configured)).expanduser()), f"{stack.source}: stackwise:kubernetes.kubeconfig"
    env = os.environ.get("KUBECONFIG")
    if env:
        first = next((p for p in env.split(os.pathsep) if p), "")
        return (str(Path(first).expanduser()) if first else None), "$KUBECONFIG"
    default = Path("~/.kube/config").expanduser()
    return (str(default) if default.is_file() else None), "~/.kube/config"


def api_client(stack: Any) -> Any:
    """An ApiClient for the stack's cluster, or a ConfigError saying what is missing."""
    from stackwise.registry import require

    require("kubernetes", "kubernetes", "running jobs on Kubernetes")
    from kubernetes import config as kube_config
    from kubernetes.config.config_exception import ConfigException

    path, origin = kubeconfig_path(stack)
    context = settings(stack).get("context")
    if path is None or not os.path.isfile(path):
        if not context and os.environ.get("KUBERNETES_SERVICE_HOST") and path is None:
            try:  # inside a pod: its service account
                configuration = _incluster()
                from kubernetes import client

                return client.ApiClient(configuration)
            except ConfigException:
                pass
        raise ConfigError(
            f"no kubeconfig for stack {stack.name!r}" + (f": {path} does not exist" if path else ""),
            where=origin,
            fix=_SETUP_FIX,
        )
    try:
        contexts, current = kube_config.list_kube_config_contexts(config_file=path)
    except (ConfigException, OSError, ValueError, TypeError) as exc:
        raise ConfigError(f"the kubeconfig {path} cannot be read: {str(exc).splitlines()[0][:200]}", where=origin,
                          fix=_SETUP_FIX) from None
    names = [c.get("name") for c in contexts or [] if isinstance(c, dict)]
    if context and context not in names:
        close = difflib.get_close_matches(str(context), [n for n in names if n], n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(
            f"the kubeconfig has no context {context!r}{hint}",
            where=f"{stack.source}: stackwise:kubernetes.context; kubeconfig {path}",
            fix=f"use one of: {', '.join(n for n in names if n) or '(none)'}; or add the cluster to the kubeconfig "
            "(`aws eks update-kubeconfig`, `gcloud container clusters get-credentials`, `az aks get-credentials`)",
        )
    if not context and not current:
        raise ConfigError(f"the kubeconfig {path} has no current context", where=origin,
                          fix="set stackwise:kubernetes.context to one of: " + (", ".join(n for n in names if n)
                                                                                or "(none)"))
    try:
        return kube_config.new_client_from_config(config_file=path, context=context or None, persist_config=False)
    except (ConfigException, OSError, ValueError, TypeError) as exc:
        raise ConfigError(f"the kubeconfig context {context or current.get('name')!r} is unusable: "
                          f"{str(exc).splitlines()[0][:200]}", where=f"{origin} ({path})", fix=_SETUP_FIX) from None


class Apis:
    """The cluster's API groups (`CoreV1Api`, `AppsV1Api`, `BatchV1Api`, `CustomObjectsApi`), built on
    first use on one ApiClient: the one given, else `api_client(stack)`."""

    def __init__(self, stack: Any, client: Any = None):
        self.stack = stack
        self._client = client
        self._apis: dict[str, Any] = {}

    @property
    def client(self) -> Any:
        if self._client is None:
            self._client = api_client(self.stack)
        return self._client

    def get(self, name: str) -> Any:
        if name not in self._apis:
            from kubernetes import client

            self._apis[name] = getattr(client, name)(self.client)
        return self._apis[name]


def _incluster() -> Any:
    from kubernetes import client
    from kubernetes.config.incluster_config import InClusterConfigLoader, SERVICE_CERT_FILENAME, \
        SERVICE_TOKEN_FILENAME

    configuration = client.Configuration()
    InClusterConfigLoader(token_filename=SERVICE_TOKEN_FILENAME, cert_filename=SERVICE_CERT_FILENAME).load_and_set(
        configuration)
    return configuration


def api_message(exc: Any) -> str:
    """The API server's own message from an ApiException (its Status body), shortened."""
    body = getattr(exc, "body", None)
    try:
        message = json.loads(body).get("message") if body else None
    except (ValueError, AttributeError):
        message = None
    return str(message or getattr(exc, "reason", None) or exc)[:600]


def call(fn: Callable[[], T], what: str, *, stack: Any, namespace: str | None = None) -> T:
    """Run one API call; map its failure onto stackwise's errors (see the module docstring)."""
    from kubernetes.client.exceptions import ApiException
    from urllib3.exceptions import HTTPError as Urllib3Error

    where = f"Kubernetes API, {what}" + (f", namespace {namespace}" if namespace else "")
    try:
        return fn()
    except ApiException as exc:
        status = int(exc.status or 0)
        message = api_message(exc)
        if status == 404:
            raise NotFound(message) from None
        if status == 409:
            raise Conflict(message) from None
        if status == 401:
            raise CredentialsError(f"the cluster refused this machine's credentials: {message}", where=where,
                                   fix="refresh the kubeconfig's credentials (`aws eks update-kubeconfig`, "
                                   "`gcloud container clusters get-credentials`, `az aks get-credentials`, or log in "
                                   "again)") from None
        if status == 403:
            raise ConfigError(f"forbidden: {message}", where=where,
                              fix=f"grant this identity the verbs stackwise uses in namespace {namespace or '?'} "
                              "(the stack's Pulumi program binds the `stackwise:kubernetes.submitters` groups to "
                              "them; docs/kubernetes.md lists them), or use a namespace you may write to") from None
        if status == 422 or status == 400:
            raise SpecError(f"the API server refused the request: {message}", where=where,
                            fix="this is a stackwise bug or a cluster older than Kubernetes "
                            f"{KUBERNETES_VERSION}; report it with the message") from None
        if status == 429 or status >= 500:
            raise TransientError(f"{what}: HTTP {status}: {message}") from None
        raise CloudError(f"{what} failed: HTTP {status}: {message}", where=where,
                         fix="see the message; `kubectl` with the same context shows the cluster's view") from None
    except Urllib3Error as exc:
        raise CloudError(f"cannot reach the cluster: {type(exc).__name__}: {str(exc)[:300]}", where=where,
                         fix="check the kubeconfig context's server address, your network or VPN, and that the "
                         "cluster is running") from None
