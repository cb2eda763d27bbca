"""The one exception type the CLI turns into a one-line error and a non-zero exit."""


class RagvlError(Exception):
    """A user-facing failure: the message names the file and the cause, on one line."""

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))
