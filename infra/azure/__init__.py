"""Azure components: training platform (with an AmlCompute cluster at 0..N), endpoint, budget."""

from .budget import Budget, BudgetArgs
from .endpoint import InferenceEndpoint, InferenceEndpointArgs
from .platform import TrainingPlatform, TrainingPlatformArgs

__all__ = ["Budget", "BudgetArgs", "InferenceEndpoint", "InferenceEndpointArgs", "TrainingPlatform",
           "TrainingPlatformArgs"]
