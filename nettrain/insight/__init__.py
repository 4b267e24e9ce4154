"""What a run tells you: gradient monitoring and diagnosis, the memory estimate, the console and
plots (`report`, `figures`) and the experiment loggers."""
