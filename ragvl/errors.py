"""The one exception type the CLI turns into a one-line error and a non-zero exit."""


class RagvlError(Exception):
    """A user-facing failure: the message names the file and the cause, on one line."""

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))


def os_error_cause(e: BaseException) -> str:
    """A short cause for a file that could not be read, for one-line errors."""
    if isinstance(e, FileNotFoundError):
        return "no such file"
    if isinstance(e, IsADirectoryError):
        return "is a directory"
    if isinstance(e, PermissionError):
        return "permission denied"
    detail = getattr(e, "strerror", None) or str(e)
    return f"cannot read ({detail})" if detail else type(e).__name__
