"""Models a config names as `model._target_`: the tutorial's SimpleNet generalised (`MLP`), a small
`CNN`, the CIFAR `ResNet`, and torchvision's architectures (`torchvision_model`)."""

from nettrain.models.cnn import CNN
from nettrain.models.from_torchvision import torchvision_model
from nettrain.models.layers import init_weights, make_activation, param_count
from nettrain.models.mlp import MLP
from nettrain.models.resnet import ResNet

__all__ = ["CNN", "MLP", "ResNet", "init_weights", "make_activation", "param_count", "torchvision_model"]
