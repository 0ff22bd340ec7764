"""The distributed launcher, as pure functions of the spec: the torchrun and accelerate commands,
the Trainer arguments of each strategy, and the DeepSpeed and accelerate configs.

Verified where (see docs/finetune.md): `ddp` with 2 CPU processes over gloo runs in the tests.
FSDP and DeepSpeed configs are built and checked as data here; they need GPUs to run (on CPU,
Trainer and accelerate silently fall back to DDP and FSDP1 refuses to start), so the launcher
refuses them on a machine without CUDA instead of pretending.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from typing import Any

from ..errors import SpecError
from ..specs import FineTuneSpec

WORKER_MODULE = "stackwise.training.worker"
DEFAULT_PORT = "29500"


def torchrun_command(spec: FineTuneSpec, worker_args: list[str], env: Mapping[str, str] | None = None,
                     python: str = sys.executable) -> list[str]:
    """The command that starts this node's share of the job's processes.

    One node: a standalone rendezvous on this machine. Several nodes: a c10d rendezvous at
    MASTER_ADDR:MASTER_PORT with this node's NODE_RANK, which the cloud job sets on each node.
    """
    env = env or {}
    compute = spec.compute
    cmd = [python, "-m", "torch.distributed.run", f"--nproc_per_node={compute.count}"]
    if compute.nodes == 1:
        cmd += ["--standalone", "--nnodes=1"]
    else:
        addr, port, rank = _node_env(spec, env)
        cmd += [f"--nnodes={compute.nodes}", f"--node_rank={rank}", "--rdzv_backend=c10d",
                f"--rdzv_endpoint={addr}:{port}", f"--rdzv_id=stackwise-{spec.digest()}"]
    return cmd + ["-m", WORKER_MODULE, *worker_args]


def accelerate_config(spec: FineTuneSpec, env: Mapping[str, str] | None = None, cuda: bool = True) -> dict[str, Any]:
    """The `accelerate launch --config_file` content for the spec (for images that launch with accelerate)."""
    env = env or {}
    compute = spec.compute
    distributed = {"none": "NO", "ddp": "MULTI_GPU" if cuda else "MULTI_CPU", "fsdp": "FSDP",
                   "deepspeed-zero2": "DEEPSPEED", "deepspeed-zero3": "DEEPSPEED"}[compute.strategy or "none"]
    config: dict[str, Any] = {
        "compute_environment": "LOCAL_MACHINE",
        "distributed_type": distributed,
        "num_machines": compute.nodes,
        "num_processes": compute.processes,
        "machine_rank": 0,
        "mixed_precision": _mixed_precision(spec, cuda),
        "use_cpu": not cuda,
    }
    if compute.nodes > 1:
        addr, port, rank = _node_env(spec, env)
        config.update(machine_rank=int(rank), main_process_ip=addr, main_process_port=int(port),
                      rdzv_backend="c10d", same_network=True)
    if compute.strategy == "fsdp":
        config["fsdp_config"] = {
            "fsdp_version": 2,
            "fsdp_auto_wrap_policy": "TRANSFORMER_BASED_WRAP",
            "fsdp_reshard_after_forward": True,
            "fsdp_state_dict_type": "SHARDED_STATE_DICT",
            "fsdp_cpu_ram_efficient_loading": True,
            "fsdp_activation_checkpointing": spec.training.gradient_checkpointing,
        }
    elif compute.strategy and compute.strategy.startswith("deepspeed"):
        config["deepspeed_config"] = {"deepspeed_config_file": "deepspeed.json", "zero3_init_flag":
                                      compute.strategy == "deepspeed-zero3"}
    return config


def accelerate_command(spec: FineTuneSpec, config_file: str, worker_args: list[str],
                       python: str = sys.executable) -> list[str]:
    return [python, "-m", "accelerate.commands.launch", "--config_file", config_file,
            "-m", WORKER_MODULE, *worker_args]


def deepspeed_config(spec: FineTuneSpec) -> dict[str, Any]:
    """A ZeRO-2 or ZeRO-3 config; "auto" values are filled by Trainer from its own arguments."""
    stage = 3 if spec.compute.strategy == "deepspeed-zero3" else 2
    zero: dict[str, Any] = {
        "stage": stage,
        "overlap_comm": True,
        "contiguous_gradients": True,
        "reduce_bucket_size": "auto",
    }
    if stage == 3:
        zero.update(stage3_prefetch_bucket_size="auto", stage3_param_persistence_threshold="auto",
                    stage3_gather_16bit_weights_on_model_save=True)
    else:
        zero.update(allgather_partitions=True, reduce_scatter=True, allgather_bucket_size=2e8)
    return {
        "zero_optimization": zero,
        "bf16": {"enabled": "auto"},
        "fp16": {"enabled": "auto"},
        "train_micro_batch_size_per_gpu": "auto",
        "gradient_accumulation_steps": "auto",
        "train_batch_size": "auto",
        "gradient_clipping": "auto",
    }


def strategy_arguments(spec: FineTuneSpec, cuda: bool, layer_classes: list[str] | None = None) -> dict[str, Any]:
    """The TrainingArguments keywords that select the spec's strategy."""
    strategy = spec.compute.strategy
    if strategy == "none":
        return {}
    args: dict[str, Any] = {"ddp_backend": "nccl" if cuda else "gloo", "ddp_find_unused_parameters": False}
    if strategy == "fsdp":
        fsdp_config: dict[str, Any] = {"version": 2, "reshard_after_forward": True,
                                       "activation_checkpointing": spec.training.gradient_checkpointing}
        if layer_classes:
            fsdp_config["transformer_layer_cls_to_wrap"] = layer_classes
        args.update(fsdp="full_shard auto_wrap", fsdp_config=fsdp_config)
    elif strategy and strategy.startswith("deepspeed"):
        args["deepspeed"] = deepspeed_config(spec)
    return args


def check_runnable(spec: FineTuneSpec, cuda_devices: int) -> None:
    """Refuse, before any work, what this machine cannot run as asked."""
    compute = spec.compute
    if compute.gpu and cuda_devices < compute.count:
        raise SpecError(
            f"the job asks for {compute.count} x {compute.gpu} per node but this machine has {cuda_devices} GPU(s)",
            where="compute.gpu", fix="drop --gpu to train on CPU here, or submit to a stack with GPUs",
        )
    if compute.strategy in ("fsdp", "deepspeed-zero2", "deepspeed-zero3") and cuda_devices == 0:
        raise SpecError(
            f"strategy {compute.strategy} needs GPUs: on CPU, FSDP1 refuses to start and Trainer falls back to "
            "plain DDP without saying so, so it would not be the strategy you asked for",
            where="compute.strategy", fix="use --strategy ddp on CPU, or submit to a stack with GPUs",
        )
    if spec.method == "qlora" and cuda_devices == 0 and spec.quantization.compute_dtype == "float16":
        raise SpecError("qlora with compute_dtype float16 is not supported on CPU", where="quantization.compute_dtype",
                        fix="use bfloat16 or float32")


def _mixed_precision(spec: FineTuneSpec, cuda: bool) -> str:
    precision = spec.training.precision
    if precision == "auto":
        return "bf16" if cuda else "no"
    return {"fp32": "no"}.get(precision, precision)


def _node_env(spec: FineTuneSpec, env: Mapping[str, str]) -> tuple[str, str, str]:
    missing = [k for k in ("MASTER_ADDR", "NODE_RANK") if not env.get(k)]
    if missing:
        raise SpecError(
            f"a {spec.compute.nodes}-node job needs {', '.join(missing)} in the environment of each node",
            where="compute.nodes",
            fix="the cloud compute adapters set MASTER_ADDR, MASTER_PORT and NODE_RANK; on the local stack use nodes=1",
        )
    return env["MASTER_ADDR"], env.get("MASTER_PORT") or DEFAULT_PORT, env["NODE_RANK"]
