"""The GPU path, pinned on CPU: the process group serves the loop's CPU sums next to NCCL, ZeRO
gets DeepSpeed's own bf16 autocast, TF32 only on CUDA, and a resume loads rank 0's tensors onto
the CPU (not onto rank 0's GPU).

NCCL needs CUDA, so the group tests use gloo in its place: a bare ``"nccl"`` group serves CUDA
tensors only, which is what ``"cuda:gloo"`` is on a CPU machine (the same error for a CPU tensor).
"""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from hybridft.specs import LoraSpec, TrainingSpec
from hybridft.train import devices, strategy
from hybridft.train.checkpoint import HISTORY_FILE, MODEL_STATE_FILE, STATE_FILE, read_checkpoint
from hybridft.train.plan import WorkerStage

# one worker of a 2-process group: for each backend, a fresh group and the loop's metric sum
WORKER = textwrap.dedent(
    """
    import json, sys
    import torch.distributed as dist
    from hybridft.train.devices import all_reduce_sum

    rank, init_dir, backends = int(sys.argv[1]), sys.argv[2], json.loads(sys.argv[3])
    for i, backend in enumerate(backends):
        dist.init_process_group(
            backend, init_method=f"file://{init_dir}/group{i}", rank=rank, world_size=2
        )
        try:
            out = {"sums": all_reduce_sum([1.0, float(rank), 0.5])}
        except RuntimeError as exc:
            out = {"error": str(exc)}
        dist.destroy_process_group()
        print(json.dumps(out), flush=True)
    """
)


def on_cpu(backend: str) -> str:
    """The same device -> backend map with gloo standing in for NCCL (a bare "nccl": CUDA only)."""
    return "cuda:gloo" if backend == "nccl" else backend.replace(":nccl", ":gloo")


def reduce_in_two_processes(tmp_path: Path, backends: list[str]) -> list[list[dict]]:
    """Each rank's result of ``all_reduce_sum`` under each backend, in real 2-process groups."""
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, str(rank), str(tmp_path), json.dumps(backends)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for rank in (0, 1)
    ]
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err[-2000:]
        results.append([json.loads(line) for line in out.splitlines() if line.startswith("{")])
    return results


def test_the_gpu_process_group_serves_the_loops_cpu_sums(tmp_path):
    gpu = devices.process_group_backend(use_gpu=True)
    assert "cuda:nccl" in gpu.split(",")  # gradients still go through NCCL
    assert devices.process_group_backend(use_gpu=False) == "gloo"
    nccl_only = on_cpu("nccl")  # the group a bare TorchConfig(backend="nccl") made
    ranks = reduce_in_two_processes(tmp_path, [nccl_only, on_cpu(gpu)])
    for before, after in ranks:
        assert "No backend type associated with device type cpu" in before["error"]
        assert after["sums"] == [2.0, 1.0, 1.0]


def test_zero_gets_deepspeeds_own_bf16_autocast_and_fp32_gradient_reduction():
    from deepspeed.runtime.config import (
        get_lower_precision_safe_modules,
        get_torch_autocast_dtype,
        get_torch_autocast_enabled,
    )

    for zero in (2, 3):
        bf16 = strategy.deepspeed_config(TrainingSpec(precision="bf16"), zero)
        # read back by DeepSpeed's own parsers: the keys and the dtype name are the ones it reads
        assert get_torch_autocast_enabled(bf16) is True
        assert get_torch_autocast_dtype(bf16) is torch.bfloat16
        assert get_lower_precision_safe_modules(bf16) == []  # no bf16 gradient reduction
        assert "bf16" not in bf16 and "fp16" not in bf16  # the parameters stay fp32

        fp32 = strategy.deepspeed_config(TrainingSpec(precision="fp32"), zero)
        assert "torch_autocast" not in fp32
        assert get_torch_autocast_enabled(fp32) is False


# a ZeRO engine on CPU, one process: the loop's forward (engine.autocast around engine.module)
# against the plain model under the bf16 autocast the loop used to put around every forward
ZERO_FORWARD = textwrap.dedent(
    """
    import copy, json, os, sys
    os.environ.update(DS_ACCELERATOR="cpu", RANK="0", LOCAL_RANK="0", WORLD_SIZE="1")
    import torch
    import torch.distributed as dist
    from transformers import LlamaConfig, LlamaForCausalLM
    from hybridft.specs import TrainingSpec
    from hybridft.train.loss import LossModel
    from hybridft.train.plan import WorkerStage
    from hybridft.train.strategy import deepspeed_engine

    dist.init_process_group("gloo", init_method=f"file://{sys.argv[1]}/group", rank=0, world_size=1)
    stage = WorkerStage("s", None, ("a",), 2, 1e-3, "constant", 0, 1.0, "full")
    training = TrainingSpec(batch_size=2, precision="bf16")
    torch.manual_seed(0)
    ids = torch.randint(0, 64, (2, 8))
    pos = torch.arange(8).repeat(2, 1)
    mask = torch.ones(2, 7, dtype=torch.bool)
    for zero in (2, 3):
        torch.manual_seed(0)
        lm = LlamaForCausalLM(LlamaConfig(
            vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
            num_attention_heads=2, num_key_value_heads=2,
        ))
        plain = LossModel(copy.deepcopy(lm))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            reference = plain(ids, pos, mask)
        engine = deepspeed_engine(lm, stage, training, zero)
        seen = []
        lm.model.layers[0].mlp.down_proj.register_forward_hook(
            lambda mod, args, out: seen.append(str(out.dtype))
        )
        with engine.autocast():
            losses = engine.module(ids, pos, mask)
        print(json.dumps({
            "zero": zero, "matmul": seen, "equal": torch.equal(losses, reference),
            "params": sorted({str(p.dtype) for p in engine.module.parameters()}),
        }), flush=True)
    """
)


def test_zero_bf16_forward_on_cpu_is_the_outer_autocast_forward(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-c", ZERO_FORWARD, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert [r["zero"] for r in runs] == [2, 3]
    for r in runs:
        assert r["matmul"] == ["torch.bfloat16"], r  # DeepSpeed's own autocast, no outer one
        assert r["equal"], r  # the same numbers as the old outer torch.autocast("cpu")
        assert r["params"] == ["torch.float32"], r  # parameters stay fp32


def test_tf32_is_switched_on_only_for_cuda_workers():
    before = torch.get_float32_matmul_precision()
    try:
        torch.set_float32_matmul_precision("highest")
        devices.allow_tf32_on_cuda(torch.device("cpu"))
        assert torch.get_float32_matmul_precision() == "highest"
        devices.allow_tf32_on_cuda(torch.device("cuda", 1))  # a device name; no GPU needed
        assert torch.get_float32_matmul_precision() == "high"
        assert torch.backends.cuda.matmul.fp32_precision == "tf32"
    finally:
        torch.set_float32_matmul_precision(before)


def saved_checkpoint(ckpt_dir: Path) -> dict[str, torch.Tensor]:
    """What ``checkpoint.write_checkpoint`` writes for a LoRA stage under DDP (its optimizer and scheduler
    after a step); returns the adapter weights."""
    layer = torch.nn.Linear(4, 3)
    stage = WorkerStage("s", None, ("a",), 4, 1e-3, "cosine", 1, 0.1, "continue")
    optimizer = strategy._optimizer(list(layer.parameters()), stage, TrainingSpec(weight_decay=0.1))
    scheduler = strategy._schedule(optimizer, stage)
    layer(torch.ones(2, 4)).sum().backward()
    optimizer.step()
    scheduler.step()
    state = {
        "stage": 0,
        "step": 1,
        "tokens": 96,
        "rng_torch": torch.get_rng_state(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
    }
    weights = {k: v.detach().clone() for k, v in layer.state_dict().items()}
    torch.save(state, ckpt_dir / STATE_FILE)
    blob = {"recipe": LoraSpec().model_dump(), "state": weights, "adapter_only": False}
    torch.save(blob, ckpt_dir / MODEL_STATE_FILE)
    (ckpt_dir / HISTORY_FILE).write_text(json.dumps({"step": 1, "loss": 3.0}) + "\n")
    return weights


def tensors_in(obj) -> list[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, dict):
        return [t for v in obj.values() for t in tensors_in(v)]
    if isinstance(obj, list | tuple):
        return [t for v in obj for t in tensors_in(v)]
    return []


def test_a_resume_loads_rank_0s_gpu_tensors_onto_the_cpu(tmp_path, monkeypatch):
    with monkeypatch.context() as m:  # written as rank 0 writes them from its GPU
        m.setattr(torch.serialization, "location_tag", lambda storage: "cuda:0")
        weights = saved_checkpoint(tmp_path)

    state, blob, history = read_checkpoint(tmp_path)
    loaded = blob["state"]

    assert {t.device.type for t in tensors_in(state) + tensors_in(loaded)} == {"cpu"}
    assert blob["recipe"] == LoraSpec().model_dump()
    assert history == [{"step": 1, "loss": 3.0}]
    assert all(torch.equal(loaded[k], weights[k]) for k in weights)
    torch.set_rng_state(state["rng_torch"])  # the CPU generator takes only a CPU state
    layer = torch.nn.Linear(4, 3)
    stage = WorkerStage("s", None, ("a",), 4, 1e-3, "cosine", 1, 0.1, "continue")
    optimizer = strategy._optimizer(list(layer.parameters()), stage, TrainingSpec(weight_decay=0.1))
    optimizer.load_state_dict(state["optimizer"])
    assert optimizer.state_dict()["state"][0]["exp_avg"].device == layer.weight.device


@pytest.mark.parametrize("file", [STATE_FILE, MODEL_STATE_FILE])
def test_checkpoint_files_are_loaded_weights_only(tmp_path, file):
    """The files hold tensors, numbers, strings and containers (the test above loads them);
    any other pickled object, here a token count left a numpy integer, is refused, not run."""
    saved_checkpoint(tmp_path)
    blob = torch.load(tmp_path / file, weights_only=True)
    torch.save({**blob, "tokens": np.int64(96)}, tmp_path / file)
    with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
        read_checkpoint(tmp_path)


class HostSyncSpy(torch.overrides.TorchFunctionMode):
    """Records every tensor operation that makes the host wait for the device on CUDA: reading a
    value (item, tolist, float, bool), a copy to the host, or a shape only the data decides
    (nonzero, boolean indexing, masked_select)."""

    SYNCS = frozenset(
        {
            torch.Tensor.item,
            torch.Tensor.tolist,
            torch.Tensor.__bool__,
            torch.Tensor.__float__,
            torch.Tensor.__int__,
            torch.Tensor.__index__,
            torch.Tensor.cpu,
            torch.Tensor.numpy,
            torch.Tensor.nonzero,
            torch.nonzero,
            torch.masked_select,
            torch.Tensor.masked_select,
        }
    )

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[str] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func in self.SYNCS:
            self.seen.append(func.__name__)
        index = args[1] if func is torch.Tensor.__getitem__ and len(args) > 1 else None
        if isinstance(index, torch.Tensor) and index.dtype == torch.bool:
            self.seen.append("boolean index")
        return func(*args, **(kwargs or {}))


def test_a_training_step_makes_no_host_sync():
    """Finding 7: the packed step (micro-batches, varlen forward, chunked loss, backward, the
    window's sums) reads nothing back from the device; only the log line does (``Window.loss``).
    On CPU the same code runs, so a sync added anywhere in it shows up here."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from hybridft.train.loop import Window, micro_batches
    from hybridft.train.loss import LossModel
    from hybridft.train.packing import pack_rows

    torch.manual_seed(0)
    lm = LlamaForCausalLM(LlamaConfig(
        vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=1, attn_implementation="sdpa",
    ))  # fmt: skip
    rng = np.random.default_rng(0)
    ids = [rng.integers(5, 64, size=int(n)).astype(np.int32) for n in rng.integers(3, 20, 12)]
    masks = [
        np.r_[np.zeros(len(x) // 2, np.int8), np.ones(len(x) - len(x) // 2, np.int8)] for x in ids
    ]
    rows = pack_rows(ids, masks, [i % 2 for i in range(12)], length=32, pad_id=0)
    module = LossModel(lm, loss_chunk=5)
    window = Window(2)
    spy = HostSyncSpy()
    with spy:
        for mb in micro_batches(rows, np.arange(len(rows)), 2, torch.device("cpu")):
            with torch.autocast("cpu", dtype=torch.bfloat16):
                losses = module(**mb["inputs"])
            losses.sum().backward()
            window.add(losses, mb)
    assert spy.seen == []
    with spy:
        assert window.loss > 0  # the log line: one read
    assert spy.seen


# a ZeRO engine on CPU, one process: save a checkpoint, load it back, then plant a pickle payload
# in its optimizer states (what a writer of the shared checkpoint storage could do) and load again
ZERO_PAYLOAD = textwrap.dedent(
    """
    import json, os, sys
    from pathlib import Path
    os.environ.update(DS_ACCELERATOR="cpu", RANK="0", LOCAL_RANK="0", WORLD_SIZE="1")
    import torch
    import torch.distributed as dist
    from transformers import LlamaConfig, LlamaForCausalLM
    from hybridft.specs import TrainingSpec
    from hybridft.train.plan import WorkerStage
    from hybridft.train.strategy import deepspeed_engine

    root, marker = Path(sys.argv[1]), sys.argv[2]
    dist.init_process_group("gloo", init_method=f"file://{root}/group", rank=0, world_size=1)
    stage = WorkerStage("s", None, ("a",), 4, 1e-3, "constant", 0, 1.0, "full")

    def engine(zero):
        torch.manual_seed(0)
        lm = LlamaForCausalLM(LlamaConfig(
            vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
            num_attention_heads=2, num_key_value_heads=2,
        ))
        return deepspeed_engine(lm, stage, TrainingSpec(batch_size=2, precision="fp32"), zero)

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    out = {}
    for zero in (2, 3):
        first = engine(zero)
        ids = torch.randint(0, 64, (2, 8))
        loss = first.module(ids, torch.arange(8).repeat(2, 1), torch.ones(2, 7).bool()).sum()
        first.backward(loss, True)
        ckpt = root / f"ckpt{zero}"
        first.save(ckpt, 0)
        engine(zero).load(ckpt, {})  # an honest checkpoint loads
        optim = next(ckpt.rglob("*optim_states.pt"))
        blob = torch.load(optim, weights_only=False)
        blob["planted"] = Payload()
        torch.save(blob, optim)
        try:
            engine(zero).load(ckpt, {})
            out[zero] = {"refused": False}
        except Exception as exc:
            out[zero] = {"refused": True, "error": str(exc).splitlines()[0]}
        out[zero]["ran"] = os.path.exists(marker)
    print(json.dumps(out), flush=True)
    """
)


@pytest.mark.slow
def test_a_planted_payload_in_a_zero_checkpoint_is_refused_not_run(tmp_path):
    """DeepSpeed's own loader would unpickle anything; ours loads weights_only (ZeRO-2 and 3)."""
    marker = tmp_path / "payload-ran"
    proc = subprocess.run(
        [sys.executable, "-c", ZERO_PAYLOAD, str(tmp_path), str(marker)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(proc.stdout.strip().splitlines()[-1])
    assert set(results) == {"2", "3"}
    for zero, out in results.items():
        assert out["refused"] and "Weights only load failed" in out["error"], (zero, out)
        assert not out["ran"]
    assert not marker.exists()
