"""The run folder on disk: the folder itself (`folder`), checkpoint files, metrics.csv, summary.json,
the provenance record, resume and resumable sweeps."""
