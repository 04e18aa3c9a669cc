"""User-facing errors."""


class BenchError(Exception):
    """A user-facing error: one clear message naming the file or argument and what was expected."""
