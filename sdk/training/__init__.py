"""Fine-tuning internals: base model resolution, datasets, the distributed launcher and the
training loop behind `stackwise.workloads.finetune`.

The modules here import torch, transformers and peft only inside functions, so the pure parts
(dataset validation, launcher commands) are usable and testable without the `train` extra.
"""
