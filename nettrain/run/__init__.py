"""The run folder on disk: the folder itself (`folder`), checkpoint files, metrics.csv, summary.json,
the provenance record, resume and resumable sweeps, and which process of a launch this is
(`launch`). The commands import these modules at the top: all but `reproducibility` are
torch-free at import."""
