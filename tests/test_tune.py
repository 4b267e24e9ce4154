"""Before training: the model summary, the LR range test and the batch-size search."""

from __future__ import annotations

import torch

from nettrain.engine.tune import largest_batch, lr_range_test, model_summary, plot_lr_find
from nettrain.models import MLP


def test_model_summary_lists_layers_output_shapes_and_parameters():
    rows = model_summary(MLP((1, 28, 28), 10), torch.zeros(2, 1, 28, 28))
    assert rows == [
        ("flatten", "Flatten", "[B, 784]", 0),
        ("fc1", "Linear", "[B, 256]", 200_960),
        ("act1", "ReLU", "[B, 256]", 0),
        ("fc2", "Linear", "[B, 10]", 2_570),
    ]


def test_largest_batch_is_the_last_that_fits():
    assert largest_batch(lambda b: 1000 + 10 * b <= 5000, limit=10_000) == 400
    assert largest_batch(lambda b: True, limit=300) == 300
    assert largest_batch(lambda b: False, limit=300) == 0


def test_range_test_stops_on_divergence_and_suggests_below_the_minimum(tmp_path):
    torch.manual_seed(0)
    x = torch.randn(256, 8)
    y = (x[:, 0] > 0).long()
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 2))
    opt = torch.optim.SGD(model.parameters(), lr=1e-7)

    def batches():
        while True:
            for i in range(0, 256, 32):
                yield x[i : i + 32], y[i : i + 32]

    result = lr_range_test(model, opt, torch.nn.CrossEntropyLoss(), batches(), start_lr=1e-4, end_lr=1e4, steps=200)
    assert result.diverged and len(result.lrs) < 200  # a huge lr ends the sweep early
    assert result.lrs[0] == 1e-4 and result.lrs[1] > result.lrs[0]
    assert result.suggestion == result.min_lr / 10
    assert 1e-3 < result.suggestion < 10
    plot_lr_find(result, tmp_path / "lr_find.png")
    assert (tmp_path / "lr_find.png").stat().st_size > 1000
