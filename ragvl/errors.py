"""The one exception type the CLI turns into a one-line error and a non-zero exit, and the helpers
that make a cause fit on that line."""


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


def short(message: object, limit: int = 120) -> str:
    """`message` (an exception or text) on one line, cut to `limit` characters; an exception
    without a message is named by its type."""
    text = " ".join(str(message).split())
    if not text and isinstance(message, BaseException):
        text = type(message).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."
