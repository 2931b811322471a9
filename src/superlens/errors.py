"""One exception type for mistakes a user can fix.

The command line turns a :class:`UserError` into one line on stderr and exit code 2;
library callers get a ``ValueError`` whose message is that same line.
"""


class UserError(ValueError):
    """A problem with the user's input, data or configuration, with the fix in the message."""


def describe(exc: BaseException, limit: int | None = None) -> str:
    """``Type: first line of the message`` (``Type`` alone when there is no message), for one-line reports."""
    text = str(exc).splitlines()[0][:limit] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
