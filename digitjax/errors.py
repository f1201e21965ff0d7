"""The one exception type for input a user can fix."""


class UserError(Exception):
    """Bad data, a bad path or a bad config value.

    `main` prints the message alone (no traceback) and exits non-zero, so the
    message must name the file, row, column or config field and what was expected.
    """


class TrainingDiverged(UserError):
    """The loss became NaN or infinite; nothing after the last good checkpoint is saved."""
