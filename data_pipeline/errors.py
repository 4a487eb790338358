"""Errors a user can act on: each message says what is wrong, where, and what to do."""


class DataError(ValueError):
    """A dataset folder, image or mask that cannot be used as it is."""

    exit_code = 2  # the CLI prints the message and exits with this, no traceback

    def __init__(self, message: str, path: object = None) -> None:
        super().__init__(message)
        self.path = path  # the file or folder it is about, when there is one


ON_BAD_IMAGE = ("skip", "fail")  # what a load does with an unreadable image: leave it out (listed), or refuse
