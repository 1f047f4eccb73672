"""The one exception type snnet raises for bad input; the command line prints it as one line."""


class SNNetError(ValueError):
    """Bad input a user can fix: incompatible anchors, a wrong checkpoint, an unknown stitch id, ..."""
