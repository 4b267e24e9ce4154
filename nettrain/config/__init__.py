"""The run config: its typed schema and up-front checks (`schema`), what a config read from a file
may build (`trust`, `usermodules`), old target names (`renames`), the `--help` page (`help`) and the
settings reference it generates for the docs (`reference`).
Nothing here imports torch."""
