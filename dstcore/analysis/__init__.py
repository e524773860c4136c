"""Stage 7, analysis: the run tables, statistics, frontiers and the paper's claims."""
