"""Inference endpoint adapters: one DeployBackend per cloud (see stackwise.deploy)."""
