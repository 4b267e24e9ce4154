"""The tutorial's rule of thumb for training memory, computed for the model at hand."""

from __future__ import annotations

import torch

from nettrain.memory import activations_per_sample, estimate_training_memory, optimizer_slots
from nettrain.models import MLP
from nettrain.optim import ManualSGD


def test_simplenet_with_adam_by_hand():
    model = MLP((1, 28, 28), 10)
    adam = torch.optim.Adam(model.parameters())
    # per sample: input 784, flatten 784, fc1 256, relu 256, fc2 10
    assert activations_per_sample(model, (1, 28, 28)) == 784 + 784 + 256 + 256 + 10
    assert optimizer_slots(adam) == 2
    expected = 4 * (203_530 * (2 + 2) + 64 * 2090)
    assert estimate_training_memory(model, adam, (1, 28, 28), 64) == expected


def test_optimizer_state_and_batch_size_move_the_estimate():
    model = MLP((1, 28, 28), 10)
    assert optimizer_slots(ManualSGD(model.parameters())) == 0
    assert optimizer_slots(torch.optim.SGD(model.parameters(), lr=0.1)) == 0
    assert optimizer_slots(torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)) == 1
    assert optimizer_slots(torch.optim.RMSprop(model.parameters())) == 1
    adam = torch.optim.Adam(model.parameters())
    small = estimate_training_memory(model, adam, (1, 28, 28), 32)
    large = estimate_training_memory(model, adam, (1, 28, 28), 256)
    assert large - small == 4 * (256 - 32) * 2090  # activations grow with the batch, weights do not


def test_the_estimate_is_in_the_summary(run):
    summary, _ = run("data=synthetic", "data.num_samples=200", "epochs=1")
    assert summary["memory_estimate_mb"] == round(4 * (203_530 * 4 + 64 * 2090) / 2**20, 2)
    assert summary["cuda_peak_memory_mb"] is None
