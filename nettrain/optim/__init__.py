"""Optimizers and learning-rate schedules beyond torch.optim: the tutorial's hand-written update
(`ManualSGD`, `optimizer=manual_sgd`) and the warmup chained with a torch scheduler (`schedulers`)."""

from nettrain.optim.manual_sgd import ManualSGD

__all__ = ["ManualSGD"]
