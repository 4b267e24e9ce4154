"""The whole-step CUDA graph contender of benchmarks/bench.py (`--worker graph`), hand-written.

SimpleNet 784-256-10, cross-entropy, fused capturable Adam with a device-tensor lr; the gather
from the resident tensors, forward, loss, backward and the Adam step are captured once with
`torch.cuda.graph` and replayed with a new index per batch, the loss summed on the device.
The same method as the issue's table (and as nettrain's trainer.cuda_graph): the ceiling a
training loop on this GPU can reach.
"""

from __future__ import annotations

import time


def graph_epoch(images, targets, batch_size: int) -> dict:
    """One epoch over `images`/`targets` (on a CUDA device) by graph replays; full batches only
    (the tail that does not fill a batch is left out, and not counted)."""
    import torch
    from torch import nn

    device = images.device
    model = nn.Sequential(nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 10)).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=torch.tensor(1e-3, device=device), fused=True, capturable=True)
    params = list(model.parameters())
    for p in params:
        p.grad = torch.zeros_like(p)
    n = len(targets)
    steps = n // batch_size
    index = torch.arange(batch_size, device=device)
    loss_sum = torch.zeros((), device=device)

    def body():
        torch._foreach_zero_([p.grad for p in params])
        loss = nn.functional.cross_entropy(model(images.index_select(0, index)), targets.index_select(0, index))
        loss.backward()
        optimizer.step()
        loss_sum.add_(loss.detach())

    saved = [p.detach().clone() for p in params]
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(2):
            body()
    torch.cuda.current_stream().wait_stream(side)
    with torch.no_grad():
        for p, v in zip(params, saved):
            p.copy_(v)
        for state in optimizer.state.values():
            for t in state.values():
                t.zero_()
        loss_sum.zero_()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        body()
    torch.cuda.synchronize()
    started = time.perf_counter()
    order = torch.randperm(n, device=device)
    for step in range(steps):
        index.copy_(order[step * batch_size : (step + 1) * batch_size])
        graph.replay()
    torch.cuda.synchronize()
    elapsed = time.perf_counter() - started
    samples = steps * batch_size
    return {
        "samples": samples,
        "seconds": elapsed,
        "samples_per_s": samples / elapsed,
        "final_loss": loss_sum.item() / steps,
    }


def worker(root: str, batch_size: int, device_name: str, threads: int, seed: int, epochs: int = 3) -> dict:
    """`bench.py --worker graph`: the data as bench.py's tensor loop holds it, then `epochs`
    epochs of graph replays; the fastest epoch is reported (the first includes no capture, but
    the GPU's clocks may still be rising)."""
    import torch
    import torchvision

    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    device = torch.device(device_name)
    if device.type != "cuda":
        raise SystemExit("the graph contender needs --device cuda")
    raw = torchvision.datasets.MNIST(root, train=True)
    images = raw.data.to(device).float().div_(255).sub_(0.1307).div_(0.3081).view(-1, 784)
    targets = raw.targets.to(device)
    runs = [graph_epoch(images, targets, batch_size) for _ in range(epochs)]
    return max(runs, key=lambda r: r["samples_per_s"])
