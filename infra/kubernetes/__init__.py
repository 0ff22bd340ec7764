"""What a stack installs on its Kubernetes cluster (docs/kubernetes.md).

`manifests` holds the objects as plain dicts (no Pulumi); `install.ClusterInstall` creates them
with pulumi-kubernetes on a provider for the created cluster (EKS, GKE, AKS: infra/<cloud>/) or
for the stack's kubeconfig context.
"""
