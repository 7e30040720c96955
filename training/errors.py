"""The one error type the command line turns into a single `error: ...` line and exit code 2.

Raised for problems a user can fix (missing data set, bad folder, unsupported option), so they see
what to do instead of a traceback. Programming errors stay ordinary exceptions.
"""


class TrainingError(Exception):
    """A user-facing problem; the message is the whole story, no traceback needed."""


class ExportError(Exception):
    """The exported SavedModel failed verification; nothing was written to the version dir."""
