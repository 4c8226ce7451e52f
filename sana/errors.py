"""User-facing errors: one line saying what is wrong and what to do."""


class SanaError(Exception):
    """An error the user can act on. The CLI prints it as one line and exits non-zero."""

    exit_code = 1

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message} ({self.hint})" if self.hint else self.message


class UsageError(SanaError):
    """Bad flag values or arguments."""

    exit_code = 2


class OutputExists(SanaError):
    """An output would replace a file that is there (no --force)."""


class Interrupted(SanaError):
    """Ctrl-C, with what was kept so far."""

    exit_code = 130


class ModelNotFound(SanaError):
    """A model name, repo id or directory that cannot be resolved."""


class OfflineError(SanaError):
    """A download was needed but the hub cannot be reached."""
