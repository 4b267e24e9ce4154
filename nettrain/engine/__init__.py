"""Training with torch: the builder (`build`), the state, the recipe, the loop and its step
(`loop`, `cuda_graph`, `precision`, `accumulate`, `ema`), early stopping, divergence, stopping on
signals, several processes (`distributed`) and the tuning aids (`tune`)."""
