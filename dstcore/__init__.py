"""dstcore: reproduce and extend dual sparse training (activation + weight sparsity)."""

__version__ = "0.1.0"

# The sub-packages in data-flow order: a module may import from its own stage and earlier ones,
# never from a later one (tests/test_layers.py checks every import, also those inside functions).
# Measurement comes before training because training evaluates its model with it.
STAGES = ("core", "data", "models", "sparsity", "kernels", "measure", "training", "analysis",
          "report", "workflow", "cli")


class DstError(Exception):
    """A user-facing error: bad config, bad data, missing files. Printed as one line by the CLI:
    characters that would break or hide the line (newlines, form feeds, other control
    characters from user input) are shown escaped."""

    def __str__(self) -> str:
        return one_line(super().__str__())


def one_line(text: str) -> str:
    """``text`` with every non-printable character (``\\n``, ``\\x0c``, ...) escaped."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def error_line(err: BaseException, width: int = 160) -> str:
    """``Type: first line of the message`` for one-line reports (torch's messages span many)."""
    line = (str(err).strip().splitlines() or [""])[0]
    return f"{type(err).__name__}: {line[:width]}"
