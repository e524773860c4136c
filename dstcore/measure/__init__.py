"""Stage 5, measurement: accuracy, activation/weight sparsity, exact MACs and kernel latency."""
