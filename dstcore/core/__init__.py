"""Stage 0, core: what every stage shares (atomic files, the environment, a run's identity)."""
