"""The errors the commands turn into a single `error: ...` line: TrainingError (exit code 2) for
problems a user can fix (missing data set, bad folder, unsupported option), so they see what to do
instead of a traceback, and ExportError (exit code 1). Programming errors stay ordinary exceptions.
"""

import sys
from collections.abc import Callable


class TrainingError(Exception):
    """A user-facing problem; the message is the whole story, no traceback needed."""


class ExportError(Exception):
    """The exported SavedModel failed verification; nothing was written to the version dir."""


def exit_code_of(action: Callable[[], object]) -> int:
    """Run a command's `action`: 0, or its TrainingError/ExportError as one line on stderr and 2/1."""
    try:
        action()
    except TrainingError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except ExportError as exc:
        print(f"error: export failed, nothing was written: {exc}", file=sys.stderr)
        return 1
    return 0
