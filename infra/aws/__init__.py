"""AWS components: training platform (SageMaker needs no standing cluster), endpoint, budget."""

from .budget import Budget, BudgetArgs
from .endpoint import InferenceEndpoint, InferenceEndpointArgs
from .platform import TrainingPlatform, TrainingPlatformArgs

__all__ = ["Budget", "BudgetArgs", "InferenceEndpoint", "InferenceEndpointArgs", "TrainingPlatform",
           "TrainingPlatformArgs"]
