"""AWS: the training platform (SageMaker needs no standing cluster), endpoint, pipeline trigger,
budget and EKS cluster; `CLOUD` is what the program, mocks, plan and policy pack use (cloud.py)."""

from .cloud import CLOUD

__all__ = ["CLOUD"]
