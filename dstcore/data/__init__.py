"""Stage 1, data: the datasets (located, verified, subset) and their loaders."""
