"""Exceptions shared across modules, each with a message a user can act on."""


class ConfabdError(Exception):
    """Base class: str(exc) is a complete, user-facing sentence."""


class ConfigError(ConfabdError):
    """A config file or setting is invalid."""


class CorruptRecord(ConfabdError):
    """A State file (or other record) that cannot be decoded."""

    def __init__(self, path, reason):
        super().__init__(f"{path}: corrupt record ({reason})")
        self.path = path
        self.reason = reason
