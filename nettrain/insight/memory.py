"""Training memory, estimated part by part for the model, optimizer, data and batch at hand.

The estimate answers "will batch N fit?", so it counts what the device really holds at the
peak of a training step:

- parameters, and their gradients (same sizes);
- optimizer state: counted by running the optimizer's own first step on a copy of the model;
- best weights: restore_best keeps a copy of the best epoch's state dict on the device;
- activations saved for backward: counted from a real forward pass (model + loss) through
  torch.autograd.graph.saved_tensors_hooks, at two batch sizes, so each saved tensor is known
  as `fixed + per_sample x batch` and can be sized for any batch without running it;
- transients: the larger of (a) one activation-sized buffer alive next to the saved ones (an
  unsaved intermediate in the forward pass, or an activation's gradient in the backward pass)
  and (b) the optimizer step's temporaries (torch's foreach Adam/RMSprop allocate one
  parameter-sized buffer, two with weight decay; fused kernels none), less the activations
  freed by then;
- data: the train, validation and test splits held on the device (in_memory data; the test
  split arrives at the end, while the others are still there), or one batch of each;
- CUDA only, a stated allowance: two cuBLAS workspaces (the forward pass runs in the main
  thread, the backward pass in autograd's device thread, and each thread's cuBLAS handle gets
  its own; 32 MiB each on Hopper and newer, 8.125 MiB before, or CUBLAS_WORKSPACE_CONFIG).
  The CUDA context itself (a few hundred MiB) is outside torch's allocator and outside the
  measured peak (torch.cuda.max_memory_allocated); the batch-size finder reads the free memory
  after the context exists, so it is left out there too.

Every tensor is rounded up to the caching allocator's 512-byte granule. On CPU there is no
workspace and no granule; the measured peak is the increase of the process's peak RSS.
"""

from __future__ import annotations

import contextlib
import copy
import os
import re
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

try:  # Unix
    import resource
except ImportError:  # Windows: the peak resident memory is not known
    resource = None  # type: ignore[assignment]

GRANULE = 512  # bytes: the CUDA caching allocator rounds every block up to this
PART_NOTES = {
    "parameters": "weights and biases",
    "gradients": "one gradient per parameter",
    "optimizer_state": "counted from the optimizer's first step on a copy",
    "best_weights": "the best epoch's weights, kept for restore_best",
    "activations": "saved for backward, one batch, counted from a real forward pass",
    "transients": "two activation-sized buffers (backward), or the optimizer step's temporaries",
    "data": "the data splits held on the device (test joins at the end)",
    "workspace": "allowance: two cuBLAS workspaces (forward thread, autograd thread)",
}


def rounded(nbytes: int, device: torch.device) -> int:
    """Bytes the allocator hands out for a tensor of `nbytes` on `device`."""
    if device.type != "cuda" or nbytes == 0:
        return nbytes
    return -(-nbytes // GRANULE) * GRANULE


@dataclass
class MemoryEstimate:
    """Bytes per part at `batch_size`; `per_batch` rebuilds the batch-dependent parts for any batch."""

    parts: dict[str, int]
    batch_size: int
    device: str
    per_batch: Callable[[int], dict[str, int]] | None = field(default=None, repr=False)

    @property
    def total(self) -> int:
        return sum(self.parts.values())

    def at(self, batch_size: int) -> int:
        """The total at another batch size (same model, optimizer and data)."""
        if self.per_batch is None:
            raise ValueError("this estimate cannot be resized")
        return sum({**self.parts, **self.per_batch(batch_size)}.values())

    def to_dict(self) -> dict[str, Any]:
        return {"parts": dict(self.parts), "bytes": self.total, "batch_size": self.batch_size, "device": self.device}

    def lines(self) -> list[str]:
        """One line per part, for the console."""
        width = max(len(k) for k in self.parts)
        out = [f"  {k:<{width}}  {v / 2**20:10.2f} MiB  {PART_NOTES.get(k, '')}" for k, v in self.parts.items()]
        out.append(f"  {'total':<{width}}  {self.total / 2**20:10.2f} MiB")
        return out


def cublas_workspace_bytes(device: torch.device) -> int:
    """One cuBLAS workspace as torch sizes it: CUBLAS_WORKSPACE_CONFIG (':KiB:count' pairs), else
    32 MiB on compute capability 9.0 and newer, 4096 KiB x 2 + 16 KiB x 8 before."""
    config = os.environ.get("CUBLAS_WORKSPACE_CONFIG", "")
    pairs = re.findall(r":(\d+):(\d+)", config)
    if pairs:
        return sum(int(size) * int(count) for size, count in pairs) * 1024
    major, _ = torch.cuda.get_device_capability(device)
    return 32 * 2**20 if major >= 9 else (4096 * 2 + 16 * 8) * 1024


def _optimizer_state_bytes(model: nn.Module, optimizer: torch.optim.Optimizer, device: torch.device) -> int:
    """State the optimizer allocates on `device`, from one step of a twin on a copy of the model."""
    twin_model = copy.deepcopy(model)
    params = [p for p in twin_model.parameters() if p.requires_grad]
    try:
        twin = type(optimizer)(params, **optimizer.defaults)
        for p in params:
            p.grad = torch.zeros_like(p)
        twin.step()
    except Exception:  # noqa: BLE001 - an optimizer that cannot be twinned: Adam-like, 2 values a parameter
        return 2 * sum(rounded(p.nbytes, device) for p in params)
    return sum(
        rounded(t.nbytes, device)
        for state in twin.state.values()
        for t in state.values()
        if isinstance(t, torch.Tensor) and t.device.type == device.type
    )


def _step_temporaries(optimizer: torch.optim.Optimizer, params: list[nn.Parameter], device: torch.device) -> int:
    """Parameter-sized buffers torch's multi-tensor (foreach) optimizers allocate during a step."""
    group = optimizer.param_groups[0]
    if group.get("fused") or not isinstance(
        optimizer, (torch.optim.Adam, torch.optim.AdamW, torch.optim.RMSprop, torch.optim.SGD)
    ):
        return 0
    copies = 1 if not isinstance(optimizer, torch.optim.SGD) else 0
    copies += bool(group.get("weight_decay")) and not isinstance(optimizer, torch.optim.AdamW)
    return copies * sum(rounded(p.nbytes, device) for p in params)


@dataclass
class _Saved:
    """Saved-for-backward tensors of one forward pass, as raw byte counts in save order."""

    sizes: list[int]
    largest_output: int


def _saved_tensors(
    model: nn.Module, loss_fn: nn.Module, x: torch.Tensor, y: torch.Tensor, autocast: Callable[[], Any]
) -> _Saved:
    """The distinct storages autograd saves for backward in model(x) + loss (parameters left out)."""
    param_ptrs = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: set[int] = set()
    sizes: list[int] = []
    outputs: list[int] = []

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        ptr = storage.data_ptr()
        if ptr not in seen and ptr not in param_ptrs:
            seen.add(ptr)
            sizes.append(storage.nbytes())
        return t

    def new_output(module: nn.Module, args: tuple, out: Any) -> None:
        inputs = {a.untyped_storage().data_ptr() for a in args if isinstance(a, torch.Tensor)}
        if isinstance(out, torch.Tensor) and out.untyped_storage().data_ptr() not in inputs:  # not a view
            outputs.append(out.untyped_storage().nbytes())

    hooks = [m.register_forward_hook(new_output) for m in model.modules() if not list(m.children())]
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), autocast():
            loss_fn(model(x), y)
    finally:
        for hook in hooks:
            hook.remove()
    return _Saved(sizes, max(outputs, default=0))


def _per_sample(small: list[int], large: list[int], b_small: int, b_large: int) -> Iterator[tuple[int, int]]:
    """(fixed, per_sample) bytes for each saved tensor, from the same pass at two batch sizes."""
    for low, high in zip(small, large):
        per = (high - low) // (b_large - b_small)
        yield low - per * b_small, per


def estimate(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    loss_fn: nn.Module,
    sample_x: torch.Tensor,
    sample_y: torch.Tensor,
    batch_size: int,
    *,
    data_bytes: int = 0,
    restore_best: bool = True,
    autocast: Callable[[], Any] | None = None,
) -> MemoryEstimate:
    """Estimate the training peak at `batch_size`.

    sample_x/sample_y: at least 4 real samples (on any device); the forward passes run on copies
    of the model in train mode, with the RNG state kept, so the run itself is untouched.
    data_bytes: what the data held on the device takes (see `data_bytes`). Call before
    torch.compile.
    """
    device = next(model.parameters()).device
    autocast = autocast or contextlib.nullcontext
    params = [p for p in model.parameters() if p.requires_grad]
    param_bytes = sum(rounded(p.nbytes, device) for p in model.parameters())
    grad_bytes = sum(rounded(p.nbytes, device) for p in params)
    best = sum(rounded(t.nbytes, device) for t in model.state_dict().values()) if restore_best else 0
    x, y = sample_x[:4].to(device), sample_y[:4].to(device)
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        twin = copy.deepcopy(model).train()
        if getattr(twin, "_compiled_call_impl", None) is not None:  # count in eager mode, not compiled
            twin._compiled_call_impl = None
        small, large = (_saved_tensors(twin, loss_fn, x[:b].clone(), y[:b].clone(), autocast) for b in (2, 4))
        del twin
        state_bytes = _optimizer_state_bytes(model, optimizer, device)
    if len(small.sizes) != len(large.sizes):  # a model whose graph depends on the batch: scale the total
        fixed_per = [(0, (sum(large.sizes) - sum(small.sizes)) // 2)]
    else:
        fixed_per = list(_per_sample(small.sizes, large.sizes, 2, 4))
    out_per = (large.largest_output - small.largest_output) // 2
    out_fixed = small.largest_output - 2 * out_per
    step_tmp = _step_temporaries(optimizer, params, device)

    def per_batch(b: int) -> dict[str, int]:
        acts = sum(rounded(f + p * b, device) for f, p in fixed_per)
        transient = max(2 * rounded(out_fixed + out_per * b, device), step_tmp - acts, 0)
        return {"activations": acts, "transients": transient}

    parts = {
        "parameters": param_bytes,
        "gradients": grad_bytes,
        "optimizer_state": state_bytes,
        "best_weights": best,
        **per_batch(batch_size),
        "data": data_bytes,
    }
    if device.type == "cuda":
        parts["workspace"] = 2 * cublas_workspace_bytes(device)
    return MemoryEstimate(parts, batch_size, str(device), per_batch)


def data_bytes(splits: list[Any], device: torch.device, in_memory: bool = True, batch_size: int = 0) -> int:
    """Bytes of the given splits (objects with .x and .y) held on the device; with in_memory=False
    only one batch of each is there at a time."""
    total = 0
    for split in splits:
        n = len(split.y)
        for t in (split.x, split.y):
            nbytes = t.nbytes if in_memory else t.nbytes * min(batch_size, n) // max(n, 1)
            total += rounded(nbytes, device)
    return total


# -- measuring the real peak -----------------------------------------------------------------------


def _status_kib(field_name: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field_name + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


class PeakMemory:
    """The peak memory of training, measured: torch.cuda.max_memory_allocated on CUDA (after a
    reset), on CPU the rise of the process's peak RSS above the RSS at `start()` (Linux: the peak
    is reset at start through /proc/self/clear_refs; elsewhere the lifetime peak is used)."""

    def __init__(self, device: torch.device):
        self.device = device
        self.baseline = 0
        self.method = "torch.cuda.max_memory_allocated" if device.type == "cuda" else "peak RSS increase"

    def start(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            return self
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # resets VmHWM to the current RSS
        except OSError:
            pass
        self.baseline = (_status_kib("VmRSS") or 0) * 1024
        return self

    def peak(self) -> int | None:
        """Bytes above the start (None when it cannot be read here)."""
        if self.device.type == "cuda":
            return int(torch.cuda.max_memory_allocated(self.device))
        hwm = _status_kib("VmHWM")
        if hwm is None:
            return None
        return max(hwm * 1024 - self.baseline, 0)


def free_memory(device: torch.device) -> tuple[int, str]:
    """Bytes free for training on `device`, and where the figure comes from."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free), "torch.cuda.mem_get_info (free device memory)"
    kib = None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    kib = int(line.split()[1])
    except OSError:
        pass
    if kib is not None:
        return kib * 1024, "MemAvailable in /proc/meminfo (available RAM)"
    pages = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    return int(pages), "free physical pages (sysconf)"


def compare(est: MemoryEstimate, peak: int | None, method: str) -> dict[str, Any]:
    """The measured peak beside the estimate. On CUDA the peak is everything torch allocated, so
    it is set against the whole estimate; on CPU it is the RSS rise after the model and the data
    were built, so it is set against the estimate less those two parts."""
    compared = est.total if est.device.startswith("cuda") else est.total - est.parts["parameters"] - est.parts["data"]
    return {
        "bytes": peak,
        "method": method,
        "compared_to_bytes": compared,
        "ratio": round(peak / compared, 3) if peak is not None and compared > 0 else None,
    }


@dataclass
class MemoryCheck:
    """A run's estimate and its peak measurement, for summary.json."""

    estimate: MemoryEstimate
    peak: PeakMemory

    def summary(self) -> dict[str, Any]:
        return {
            "memory_estimate": self.estimate.to_dict(),
            "memory_estimate_mb": round(self.estimate.total / 2**20, 2),
            "memory_peak": compare(self.estimate, self.peak.peak(), self.peak.method),
        }


def peak_rss_mb() -> float | None:
    """This process's peak resident memory so far, in MiB; None where the system does not say
    (Windows has no `resource` module)."""
    if resource is None:
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10  # bytes on macOS, KiB on Linux
