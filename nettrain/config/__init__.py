"""The run config: its typed schema and up-front checks (`schema`), whether the step can be one
CUDA graph (`graph_plan`), what a config read from a file may build (`trust`, `usermodules`),
old target names (`renames`), the `--help` page (`help`), the settings reference it generates for
the docs (`reference`) and what Hydra is given before it composes (`store`).
Nothing here imports torch."""
