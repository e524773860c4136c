"""dstcore: reproduce and extend dual sparse training (activation + weight sparsity)."""

__version__ = "0.1.0"


class DstError(Exception):
    """A user-facing error: bad config, bad data, missing files. Printed as one line by the CLI."""


def error_line(err: BaseException, width: int = 160) -> str:
    """``Type: first line of the message`` for one-line reports (torch's messages span many)."""
    line = (str(err).strip().splitlines() or [""])[0]
    return f"{type(err).__name__}: {line[:width]}"
