"""ClusterInstall: the stack's objects on its cluster, created with pulumi-kubernetes' typed resources
from the manifests of `manifests.py`, on a provider for the created cluster (its kubeconfig, exec
plugin auth) or for the stack's kubeconfig context (an existing cluster)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pulumi
import pulumi_kubernetes as k8s

from . import manifests


@dataclass
class ClusterInstallArgs:
    install: manifests.Install
    """What to install (namespace, service account, submitters' Role, Kueue queue, PodMonitor)."""
    kubeconfig: pulumi.Input[str] | None = None
    """A created cluster's kubeconfig (exec plugin auth, no credential); None: an existing cluster."""
    context: str | None = None
    """An existing cluster: the kubeconfig context of the machine running `pulumi up` (None: its current one)."""
    after: list[pulumi.Resource] | None = None
    """Resources the objects wait for (the created cluster's node pools, its identity binding)."""


def _slug(obj: dict[str, Any]) -> str:
    return f"{obj['kind'].lower()}-{obj['metadata']['name']}"


class ClusterInstall(pulumi.ComponentResource):
    """The namespace first, then the other objects (each depends on the namespace; the ClusterQueue
    on its flavors, the LocalQueue on its ClusterQueue), all on one provider that is its child."""

    def __init__(self, name: str, args: ClusterInstallArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("stackwise:kubernetes:ClusterInstall", name, None, opts)
        if args.kubeconfig is not None:
            # Not a credential (the exec plugin gets a token when `pulumi up` runs); kept secret anyway,
            # so nothing of the cluster's endpoint lands in plain state or plans.
            self.provider = k8s.Provider(f"{name}-provider", kubeconfig=pulumi.Output.secret(args.kubeconfig),
                                         opts=pulumi.ResourceOptions(parent=self))
        else:
            self.provider = k8s.Provider(f"{name}-provider", context=args.context,
                                         opts=pulumi.ResourceOptions(parent=self))
        self.manifests = manifests.manifests(args.install)
        self.objects: dict[str, pulumi.CustomResource] = {}
        after = list(args.after or [])
        namespace = None
        for obj in self.manifests:
            depends = after + ([namespace] if namespace is not None else []) + self._named_by(obj)
            opts_ = pulumi.ResourceOptions(parent=self, provider=self.provider, depends_on=depends)
            created = _create(f"{name}-{_slug(obj)}", obj, opts_)
            self.objects[_slug(obj)] = created
            if obj["kind"] == "Namespace":
                namespace = created
        self.register_outputs({"namespace": args.install.namespace})

    def _named_by(self, obj: dict[str, Any]) -> list[pulumi.Resource]:
        """The objects `obj` names: a ClusterQueue its flavors, a LocalQueue its ClusterQueue."""
        spec = obj.get("spec") or {}
        if obj["kind"] == "ClusterQueue":
            names = [f["name"] for g in spec["resourceGroups"] for f in g["flavors"]]
            return [self.objects[f"resourceflavor-{n}"] for n in names if f"resourceflavor-{n}" in self.objects]
        if obj["kind"] == "LocalQueue":
            return [self.objects[key] for key in [f"clusterqueue-{spec['clusterQueue']}"] if key in self.objects]
        return []


def _create(name: str, obj: dict[str, Any], opts: pulumi.ResourceOptions) -> pulumi.CustomResource:
    """The typed pulumi-kubernetes resource for a manifest; custom kinds as CustomResource."""
    kind, meta = obj["kind"], obj["metadata"]
    if kind == "Namespace":
        return k8s.core.v1.Namespace(name, metadata=meta, opts=opts)
    if kind == "ServiceAccount":
        return k8s.core.v1.ServiceAccount(name, metadata=meta, opts=opts)
    if kind == "Role":
        return k8s.rbac.v1.Role(name, metadata=meta, rules=obj["rules"], opts=opts)
    if kind == "RoleBinding":
        return k8s.rbac.v1.RoleBinding(name, metadata=meta, role_ref=obj["roleRef"], subjects=obj["subjects"],
                                       opts=opts)
    if obj["apiVersion"] in (manifests.KUEUE_VERSION, manifests.PODMONITOR_VERSION):
        return k8s.apiextensions.CustomResource(name, api_version=obj["apiVersion"], kind=kind, metadata=meta,
                                                spec=obj.get("spec", {}), opts=opts)
    raise ValueError(f"no pulumi-kubernetes resource for {obj['apiVersion']} {kind}")
