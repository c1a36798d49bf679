"""The one exception type the CLI turns into a one-line message (no traceback), and the helper
that makes another exception's text fit in such a line."""

from typing import Optional


class UserError(Exception):
    """A problem with the user's input (config, data, paths, tracking URI) that names its fix.

    The message is a single line; the CLI prints it as ``error: <message>`` and exits with 2.
    """


class ConfigError(UserError, ValueError):
    """An invalid configuration: unknown key, wrong type, value out of range, unknown name."""


def first_line(exc: BaseException, limit: Optional[int] = None) -> str:
    """The first line of ``exc``'s message (at most ``limit`` characters), or its type's name
    when it has none: another library's error quoted inside one of ours."""
    text = str(exc).strip()
    return text.splitlines()[0][:limit] if text else type(exc).__name__
