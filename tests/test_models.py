"""The tutorial's network concepts as model options: SimpleNet, activations, norms, dropout, init."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from simplenet import SimpleNet
from torch import nn

from nettrain.models import CNN, MLP, init_weights, param_count


def test_default_mlp_is_the_tutorials_simplenet():
    torch.manual_seed(0)
    reference = SimpleNet()
    torch.manual_seed(0)
    mlp = MLP(input_shape=(1, 28, 28), num_classes=10)
    assert {k: v.shape for k, v in mlp.state_dict().items()} == {k: v.shape for k, v in reference.state_dict().items()}
    for key, value in reference.state_dict().items():  # same init order, so the same weights
        assert torch.equal(mlp.state_dict()[key], value)
    x = torch.randn(64, 1, 28, 28)
    assert torch.equal(mlp(x), reference(x.flatten(1)))
    assert param_count(mlp) == 784 * 256 + 256 + 256 * 10 + 10 == 203_530


def test_gelu_is_used_when_chosen():
    mlp = MLP((1, 28, 28), 10, activation="gelu")
    assert isinstance(mlp.act1, nn.GELU)
    assert not any(isinstance(m, nn.ReLU) for m in mlp.modules())
    x = torch.randn(8, 1, 28, 28)
    assert torch.allclose(mlp(x), mlp.fc2(F.gelu(mlp.fc1(x.flatten(1)))))


@pytest.mark.parametrize(
    "name, module",
    [("relu", nn.ReLU), ("tanh", nn.Tanh), ("sigmoid", nn.Sigmoid), ("leaky_relu", nn.LeakyReLU), ("silu", nn.SiLU)],
)
def test_each_activation_is_the_named_module(name, module):
    assert isinstance(MLP((4,), 2, hidden=[3], activation=name).act1, module)


def test_batchnorm_normalises_per_batch_in_train_and_uses_running_stats_in_eval():
    mlp = MLP((1, 28, 28), 10, norm="batchnorm")
    assert isinstance(mlp.bn1, nn.BatchNorm1d) and mlp.bn1.num_features == 256
    x = torch.randn(32, 1, 28, 28) * 5 + 3
    mlp.train()
    hidden = mlp.bn1(mlp.fc1(x.flatten(1)))
    assert hidden.mean(0).abs().max() < 1e-5  # batch statistics: zero mean per feature
    assert mlp.bn1.num_batches_tracked == 1
    mlp.eval()
    running = mlp.bn1(mlp.fc1(x.flatten(1)))
    assert running.mean(0).abs().max() > 0.1  # running statistics after one batch: not centred
    assert mlp.bn1.num_batches_tracked == 1  # eval does not update them


def test_layernorm_normalises_each_sample_in_both_modes():
    mlp = MLP((1, 28, 28), 10, norm="layernorm")
    assert isinstance(mlp.ln1, nn.LayerNorm)
    x = torch.randn(4, 1, 28, 28) * 5 + 3
    for mode in (mlp.train, mlp.eval):
        mode()
        h = mlp.ln1(mlp.fc1(x.flatten(1)))
        assert h.mean(1).abs().max() < 1e-5 and torch.allclose(h.std(1, unbiased=False), torch.ones(4), atol=1e-3)


def test_dropout_zeroes_units_in_train_mode_only():
    mlp = MLP((1, 28, 28), 10, dropout=0.5)
    assert isinstance(mlp.dropout1, nn.Dropout) and mlp.dropout1.p == 0.5
    h = torch.ones(1000, 256)
    mlp.train()
    dropped = mlp.dropout1(h)
    assert 0.4 < (dropped == 0).float().mean() < 0.6
    assert set(dropped.unique().tolist()) == {0.0, 2.0}  # survivors scaled by 1 / (1 - p)
    mlp.eval()
    assert torch.equal(mlp.dropout1(h), h)
    assert not any(isinstance(m, nn.Dropout) for m in MLP((1, 28, 28), 10).modules())


def test_kaiming_normal_has_the_expected_spread():
    torch.manual_seed(0)
    mlp = MLP((1, 28, 28), 10, hidden=[1024], init="kaiming_normal")
    expected = math.sqrt(2.0 / 784)  # the tutorial: kaiming_normal_(w, mode='fan_in'), gain sqrt(2)
    assert mlp.fc1.weight.std().item() == pytest.approx(expected, rel=0.02)
    assert mlp.fc1.weight.mean().abs().item() < expected * 0.01
    assert torch.count_nonzero(mlp.fc1.bias) == 0
    default = MLP((1, 28, 28), 10, hidden=[1024])
    assert default.fc1.weight.std().item() == pytest.approx(1 / math.sqrt(3 * 784), rel=0.02)  # torch's default


@pytest.mark.parametrize(
    "init, std",
    [
        ("kaiming_uniform", lambda fi, fo: math.sqrt(2 / fi)),
        ("xavier_normal", lambda fi, fo: math.sqrt(2 / (fi + fo))),
        ("xavier_uniform", lambda fi, fo: math.sqrt(2 / (fi + fo))),
    ],
)
def test_other_inits_have_their_spread(init, std):
    torch.manual_seed(0)
    layer = init_weights(nn.Sequential(nn.Linear(800, 600)), init)[0]
    assert layer.weight.std().item() == pytest.approx(std(800, 600), rel=0.02)


def test_cnn_shapes_and_norms():
    cnn = CNN((1, 28, 28), 10, norm="batchnorm", dropout=0.3)
    assert cnn(torch.randn(2, 1, 28, 28)).shape == (2, 10)
    assert isinstance(cnn.bn1, nn.BatchNorm2d) and isinstance(cnn.dropout, nn.Dropout)
    assert isinstance(CNN((3, 32, 32), 5, norm="layernorm").ln2, nn.GroupNorm)
    with pytest.raises(ValueError, match="too many pooling stages"):
        CNN((1, 4, 4), 10, channels=[8, 8, 8])


def test_bad_names_raise_naming_the_argument():
    with pytest.raises(ValueError, match="activation='swish': allowed: relu"):
        MLP((4,), 2, activation="swish")
    with pytest.raises(ValueError, match="init='orthogonal'"):
        MLP((4,), 2, init="orthogonal")
