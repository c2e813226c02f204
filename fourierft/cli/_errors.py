"""The CLI's one error type: a message meant for the user, printed as one line, never with a traceback."""

from __future__ import annotations


class CLIError(Exception):
    """Bad input or a failed step the user can fix; ``main`` prints ``fourierft <cmd>: error: <message>``."""
