"""One exception type for mistakes a user can fix.

The command line turns a :class:`UserError` into one line on stderr and exit code 2;
library callers get a ``ValueError`` whose message is that same line.
"""


class UserError(ValueError):
    """A problem with the user's input, data or configuration, with the fix in the message."""
