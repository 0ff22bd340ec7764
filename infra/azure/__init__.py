"""Azure: the training platform (an AmlCompute cluster at 0..N), endpoint, pipeline trigger, budget
and AKS cluster; `CLOUD` is what the program, mocks, plan and policy pack use (cloud.py)."""

from .cloud import CLOUD

__all__ = ["CLOUD"]
