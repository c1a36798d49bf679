"""The one exception type the CLI turns into a one-line message (no traceback)."""


class UserError(Exception):
    """A problem with the user's input (config, data, paths, tracking URI) that names its fix.

    The message is a single line; the CLI prints it as ``error: <message>`` and exits with 2.
    """


class ConfigError(UserError, ValueError):
    """An invalid configuration: unknown key, wrong type, value out of range, unknown name."""
