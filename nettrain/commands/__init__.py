"""The console scripts (`nettrain-train`, `-eval`, `-predict`, `-export`, `-summarize`,
`-verify-resume`): arguments in, one exit status out. Importing them does not import torch; the
work is imported at the command boundary."""
