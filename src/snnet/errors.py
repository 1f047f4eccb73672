"""The one exception type snnet raises for bad input; the command line prints it as one line."""


class SNNetError(ValueError):
    """Bad input a user can fix: incompatible anchors, a wrong checkpoint, an unknown stitch id, ..."""


def first_line(e: BaseException) -> str:
    """An exception's message cut to its first line (its type name when it has none), for a one-line error."""
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__
