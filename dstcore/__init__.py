"""dstcore: reproduce and extend dual sparse training (activation + weight sparsity)."""

__version__ = "0.1.0"


class DstError(Exception):
    """A user-facing error: bad config, bad data, missing files. Printed as one line by the CLI."""
