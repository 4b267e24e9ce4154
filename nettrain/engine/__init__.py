"""Training with torch: the builder (`build`), the state and its checkpoints (`state`,
`checkpointer`), the recipe, the loop and its step (`loop`, `cuda_graph`, `precision`,
`accumulate`, `ema`), early stopping, divergence, stopping on signals, several processes
(`distributed`), the end of a run (`record`) and the tuning aids (`tune`)."""
