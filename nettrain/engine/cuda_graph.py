"""The whole training step as one CUDA graph: `trainer.cuda_graph` = auto | on | off.

On a GPU, a small model's step is bound by kernel launches, not by arithmetic. The graph step
captures everything one batch does, once, with `torch.cuda.graph`, and then replays it with a
new index per batch:

    gather the batch from the tensors resident on the device (a static index buffer)
    -> forward (bf16 autocast if asked) -> loss -> L1 -> backward -> gradient-mean sums
    -> grad clipping -> the optimizer step (capturable or fused, learning rate a device tensor)

Dropout draws from the CUDA generator, which the graph registers, so each replay gets fresh
masks and the generator's state (saved in checkpoints) advances as in the eager loop. BatchNorm
updates its running statistics in place. The learning rate lives in a device tensor that the
warmup and the schedulers fill in place between replays, so nothing is captured again.

What cannot live in a graph falls back to the eager step (`auto`) or is refused (`on`):
nettrain/config/graph_plan.py decides from the config alone, without torch; a capture that fails
at run time (a model whose control flow reads its data on the host, say) is the one fallback
found only when it is tried.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch

from nettrain.config.graph_plan import Plan
from nettrain.engine.loop import l1_penalty, train_step
from nettrain.errors import ConfigError

EVAL_BATCH_SIZE = 1024  # validation and test batches at least this large when the step is a graph
WARMUP_STEPS = 2  # eager steps on a side stream before capture (lazy state, cuBLAS workspaces)


class GraphCaptureError(RuntimeError):
    """The training step could not be captured (the message says which feature and why)."""


def tensor_lr(optimizer: torch.optim.Optimizer, device: torch.device) -> None:
    """Hold each param group's learning rate in a float32 tensor on `device`, so the schedulers
    (which fill a tensor lr in place) change it between replays without a new capture."""
    for group in optimizer.param_groups:
        lr = group["lr"]
        if not (isinstance(lr, torch.Tensor) and lr.device == device and lr.dtype == torch.float32):
            group["lr"] = torch.tensor(float(lr), dtype=torch.float32, device=device)


@dataclass
class _Graph:
    graph: Any  # torch.cuda.CUDAGraph
    index: torch.Tensor  # the static index buffer the gather reads
    batch_loss: torch.Tensor  # the replay's loss * batch size (written by each replay)


class GraphStep:
    """The training step as CUDA graph replays: `step(index) -> loss * batch size` (on the device).

    One graph per batch size (the last batch of an epoch may be smaller) and, when the gradient
    monitor samples every n-th step, one more per batch size with the sampling in it. All graphs
    share one memory pool and read and write the same parameters, gradients, optimizer state and
    learning-rate tensors. They are captured when the step is built: after a resume has loaded
    its state, before the first epoch's clock starts.
    """

    def __init__(
        self,
        *,
        model,
        loss_fn,
        optimizer,
        x: torch.Tensor,
        y: torch.Tensor,
        batch_sizes: Iterable[int],
        autocast_dtype=None,
        l1: float = 0.0,
        grad_clip: float | None = None,
        grad_monitor=None,
        schedule=None,
        capture: bool = True,
    ):
        self.model, self.loss_fn, self.optimizer, self.schedule = model, loss_fn, optimizer, schedule
        self.x, self.y = x, y
        self.device = x.device
        self.autocast_dtype, self.l1, self.grad_clip = autocast_dtype, l1, grad_clip
        self.monitor = grad_monitor if grad_monitor is not None and grad_monitor.enabled else None
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.l1_params = [p for p in self.params if p.dim() > 1]
        tensor_lr(optimizer, self.device)
        for p in self.params:  # static gradients: zeroed inside the graph, never set to None
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        self.pool: Any = None  # the graphs' shared memory pool
        self.graphs: dict[tuple[int, bool], _Graph] = {}
        if capture:
            self.capture(batch_sizes)

    def capture(self, batch_sizes: Iterable[int]) -> None:
        """Capture the graphs of these batch sizes (GraphCaptureError if that fails)."""
        model = self.model
        variants = (False, True) if self.monitor and self.monitor.every_n_steps > 1 else (self.monitor is not None,)
        was_training = model.training
        model.train()
        try:
            for size in sorted(set(batch_sizes), reverse=True):
                for sampled in variants:
                    self.graphs[(size, sampled)] = self._capture(size, sampled)
        finally:
            model.train(was_training)

    # -- the step ---------------------------------------------------------------------------
    def _body(self, index: torch.Tensor, sampled: bool) -> torch.Tensor:
        """What one batch does; run eagerly to warm up, then once more under capture."""
        torch._foreach_zero_([p.grad for p in self.params])
        x, y = self.x.index_select(0, index), self.y.index_select(0, index)
        if self.autocast_dtype is None:
            loss = self.loss_fn(self.model(x), y)
        else:  # no weight cache: the casts belong inside the graph
            with torch.autocast(self.device.type, dtype=self.autocast_dtype, cache_enabled=False):
                loss = self.loss_fn(self.model(x), y)
        batch_loss = loss.detach() * index.numel()
        if self.l1:
            loss = loss + self.l1 * l1_penalty(self.l1_params)
        loss.backward()
        if sampled and self.monitor is not None:  # the gradient monitor's sums, as accumulate adds them
            self.monitor.add_sums()
        if self.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.params, self.grad_clip, foreach=True)
        self.optimizer.step()
        return batch_loss

    def __call__(self, index: torch.Tensor, _: Any = None, weight: float = 1.0) -> torch.Tensor:
        """One training step on the samples `index` (a device tensor), then the schedule's step;
        returns loss * batch size, overwritten by the next replay of the same graph. `weight` (a
        rank's share of a global batch) is always 1 here: distributed runs never capture."""
        sampled = self.monitor.tick() if self.monitor is not None else False
        g = self.graphs[(index.numel(), sampled)]
        g.index.copy_(index)
        g.graph.replay()
        if self.schedule is not None:
            self.schedule.after_step()
        return g.batch_loss

    # -- capture ----------------------------------------------------------------------------
    def _state(self) -> list[torch.Tensor]:
        """Every tensor the step changes in place, to put back after the warm-up."""
        tensors = [p.detach() for p in self.model.parameters()] + [b for b in self.model.buffers()]
        for state in self.optimizer.state.values():
            tensors += [v for v in state.values() if hasattr(v, "copy_")]
        if self.monitor is not None:
            tensors.append(self.monitor.sums)
        return tensors

    def _capture(self, size: int, sampled: bool) -> _Graph:
        index = torch.arange(size, device=self.device) % len(self.y)
        before = self._state()
        saved = [t.clone() for t in before]
        rng = torch.cuda.get_rng_state(self.device)
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        try:
            with torch.cuda.stream(side), warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=".*capturable=True.*")  # uncaptured on purpose
                for _ in range(WARMUP_STEPS):
                    self._body(index, sampled)
            torch.cuda.current_stream(self.device).wait_stream(side)
            self._put_back(before, saved, rng)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=self.pool):
                batch_loss = self._body(index, sampled)
        except Exception as exc:  # any failure to capture means: use the eager step
            with contextlib.suppress(RuntimeError):
                torch.cuda.synchronize(self.device)
                self._put_back(before, saved, rng)
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise GraphCaptureError(
                f"capturing the step failed ({type(exc).__name__}: {first}); "
                "a model whose control flow reads tensor values on the host "
                "(if x.sum() > 0, .item(), data-dependent shapes) cannot be captured"
            ) from exc
        self._put_back(before, saved, rng)
        self.pool = graph.pool()
        return _Graph(graph, index, batch_loss)

    def _put_back(self, before: list, saved: list, rng) -> None:
        """Undo the warm-up: the same tensors get their old values; optimizer state the warm-up
        created (a fresh run's first step) is zeroed, which is what a fresh state means for the
        capturable and fused optimizers (step 0, zero moments, zero momentum buffers)."""
        kept = {id(t) for t in before}
        with torch.no_grad():
            for t, v in zip(before, saved):
                t.copy_(v)
            for state in self.optimizer.state.values():
                for v in state.values():
                    if isinstance(v, torch.Tensor) and id(v) not in kept:
                        v.zero_()
        torch.cuda.set_rng_state(rng, self.device)


class IndexBatches:
    """In-memory training batches served as their sample index, `(index, index)`: the graph step
    gathers the rows itself, inside the graph. Everything else (len, n, order, generator, the
    device tensors x and y) is the wrapped Batches'."""

    def __init__(self, batches):
        if not batches.in_memory:
            raise ValueError("IndexBatches needs in-memory batches (data.in_memory=true)")
        self.inner = batches

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def __len__(self) -> int:
        return len(self.inner)

    def batch_sizes(self) -> set[int]:
        """The batch sizes an epoch has: the full one, and the last batch's if it is smaller."""
        n, size = self.inner.n, self.inner.batch_size
        return {min(size, n)} | ({n % size} if n > size and n % size else set())

    def batches(self, order, first_step: int = 0):
        n, size, device = self.inner.n, self.inner.batch_size, self.inner.device
        order = torch.arange(n, device=device) if order is None else order.to(device)
        for start in range(first_step * size, n, size):
            index = order[start : start + size]
            yield index, index

    def __iter__(self):
        return self.batches(self.order())


class StepChoice:
    """`make_step(state, settings)` for the loop: the graph step over `batches` when the plan
    captures, else the eager step. When the capture itself fails, `on` raises a ConfigError and
    `auto` says why and trains eagerly (gathering each batch itself, as Batches does).
    `used` says which step the loop got: `cuda_graph` or `eager`."""

    def __init__(self, setting: str, graph_plan: Plan | None, batches, report: Callable[[str], None]):
        self.setting, self.plan, self.batches, self.report = setting, graph_plan, batches, report
        self.used = "eager"

    def __call__(self, state, settings):
        if self.plan is None or not self.plan.capture:
            message = self.plan.message() if self.plan is not None else None
            if message:
                self.report(message)
            return train_step(state, settings)
        try:
            step = GraphStep(
                model=state.model,
                loss_fn=state.loss_fn,
                optimizer=state.optimizer,
                x=self.batches.x,
                y=self.batches.y,
                batch_sizes=self.batches.batch_sizes(),
                autocast_dtype=state.precision.dtype,
                l1=settings.l1,
                grad_clip=settings.grad_clip,
                grad_monitor=state.grad_monitor,
                schedule=state.schedule,
            )
        except GraphCaptureError as exc:
            return self._eager_instead(exc, train_step(state, settings))
        self.used = "cuda_graph"
        sizes = sorted({size for size, _ in step.graphs}, reverse=True)
        self.report(
            f"trainer.cuda_graph={self.setting}: the training step is one CUDA graph replay per batch "
            f"({len(step.graphs)} graphs: batch size {' and '.join(map(str, sizes))}"
            + (", with and without gradient-mean sampling)" if len(step.graphs) > len(sizes) else ")")
        )
        return step

    def _eager_instead(self, exc: GraphCaptureError, eager):
        if self.setting == "on":
            raise ConfigError(
                [f"trainer.cuda_graph='on': {exc}; use trainer.cuda_graph=auto to fall back to the eager step, or off"]
            ) from exc
        self.report(f"trainer.cuda_graph={self.setting}: the eager step is used: {exc}")
        x, y = self.batches.x, self.batches.y
        return lambda index, _=None, weight=1.0: eager(x.index_select(0, index), y.index_select(0, index), weight)
