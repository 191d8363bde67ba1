"""The project's base error: an expected failure (bad params, input or file) that a user can fix.

Each module raises its own subclass with a message naming the file or parameter and the fix;
library exceptions are converted where they happen, so that :func:`edgeml.stage.run` can print
exactly these as one line while any other exception (a bug) keeps its traceback.
"""


class EdgeMLError(Exception):
    """An expected failure; its message names the file or parameter and the fix."""
