"""The run config: its typed schema and up-front checks (`schema`), what a config read from a file
may build (`trust`, `usermodules`), old target names (`renames`), and the `--help` page (`help`).
Nothing here imports torch."""
