"""The distributed launcher as data: torchrun / accelerate commands, strategy arguments and the
DeepSpeed config built from the spec, and what a machine without GPUs refuses."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from stackwise.errors import SpecError
from stackwise.specs import FineTuneSpec
from stackwise.training.launch import (WORKER_MODULE, accelerate_command, accelerate_config, check_runnable,
                                       deepspeed_config, strategy_arguments, torchrun_command)
from stackwise.training.trainer import COMPLETE, last_checkpoint


def spec(**compute) -> FineTuneSpec:
    return FineTuneSpec(base="m", data="d.jsonl", compute=compute)


def test_one_node_is_a_standalone_torchrun():
    cmd = torchrun_command(spec(count=2), ["--plan", "p.json"], python="py")
    assert cmd == ["py", "-m", "torch.distributed.run", "--nproc_per_node=2", "--standalone", "--nnodes=1",
                   "-m", WORKER_MODULE, "--plan", "p.json"]


def test_several_nodes_rendezvous_at_the_master_with_this_node_rank():
    s = spec(gpu="A100", count=8, nodes=2)
    cmd = torchrun_command(s, [], env={"MASTER_ADDR": "10.0.0.1", "NODE_RANK": "1"}, python="py")
    assert "--nnodes=2" in cmd and "--node_rank=1" in cmd and "--nproc_per_node=8" in cmd
    assert "--rdzv_endpoint=10.0.0.1:29500" in cmd and f"--rdzv_id=stackwise-{s.digest()}" in cmd
    with pytest.raises(SpecError, match="needs MASTER_ADDR, NODE_RANK"):
        torchrun_command(s, [], env={})


def test_strategy_arguments():
    assert strategy_arguments(spec(), cuda=False) == {}
    assert strategy_arguments(spec(count=2), cuda=False) == {"ddp_backend": "gloo", "ddp_find_unused_parameters": False}
    assert strategy_arguments(spec(gpu="A100", count=2), cuda=True)["ddp_backend"] == "nccl"
    fsdp = strategy_arguments(spec(gpu="A100", count=8, strategy="fsdp"), cuda=True, layer_classes=["LlamaDecoderLayer"])
    assert fsdp["fsdp"] == "full_shard auto_wrap"
    assert fsdp["fsdp_config"]["transformer_layer_cls_to_wrap"] == ["LlamaDecoderLayer"]
    ds = strategy_arguments(spec(gpu="A100", count=8, strategy="deepspeed-zero3"), cuda=True)
    assert ds["deepspeed"]["zero_optimization"]["stage"] == 3


def test_deepspeed_configs_leave_sizes_to_trainer_and_are_json():
    two = deepspeed_config(spec(gpu="H100", count=8, strategy="deepspeed-zero2"))
    three = deepspeed_config(spec(gpu="H100", count=8, strategy="deepspeed-zero3"))
    assert two["zero_optimization"]["stage"] == 2 and "stage3_prefetch_bucket_size" not in two["zero_optimization"]
    assert three["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"] is True
    assert two["train_micro_batch_size_per_gpu"] == "auto" == two["gradient_accumulation_steps"]
    json.dumps(three)


def test_accelerate_config_and_command():
    cfg = accelerate_config(spec(gpu="A100", count=4, nodes=2, strategy="fsdp"),
                            env={"MASTER_ADDR": "h0", "MASTER_PORT": "1234", "NODE_RANK": "1"})
    assert (cfg["distributed_type"], cfg["num_processes"], cfg["num_machines"]) == ("FSDP", 8, 2)
    assert (cfg["machine_rank"], cfg["main_process_ip"], cfg["main_process_port"]) == (1, "h0", 1234)
    assert cfg["fsdp_config"]["fsdp_version"] == 2
    assert accelerate_config(spec(count=2), cuda=False)["distributed_type"] == "MULTI_CPU"
    cmd = accelerate_command(spec(count=2), "acc.yaml", ["--plan", "p"], python="py")
    assert cmd[:5] == ["py", "-m", "accelerate.commands.launch", "--config_file", "acc.yaml"]


def test_a_machine_without_gpus_refuses_what_it_cannot_run_as_asked():
    check_runnable(spec(count=2), cuda_devices=0)  # CPU DDP over gloo is fine
    with pytest.raises(SpecError, match="asks for 8 x A100 per node but this machine has 0"):
        check_runnable(spec(gpu="A100", count=8), cuda_devices=0)
    for strategy in ("fsdp", "deepspeed-zero2", "deepspeed-zero3"):
        with pytest.raises(SpecError, match=f"strategy {strategy} needs GPUs"):
            check_runnable(spec(count=2, strategy=strategy), cuda_devices=0)
    check_runnable(spec(gpu="A100", count=2, strategy="fsdp"), cuda_devices=2)


def test_last_checkpoint_skips_and_removes_partial_ones(tmp_path: Path):
    assert last_checkpoint(tmp_path / "none") is None
    for step, complete in ((10, True), (20, True), (30, False)):
        folder = tmp_path / f"checkpoint-{step}"
        folder.mkdir()
        (folder / "trainer_state.json").write_text(json.dumps({"global_step": step}))
        if complete:
            (folder / COMPLETE).write_text(str(step))
    (tmp_path / "checkpoint-20" / "trainer_state.json").write_text("{trunc")  # killed mid-write
    assert last_checkpoint(tmp_path) == tmp_path / "checkpoint-10"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-10"]
