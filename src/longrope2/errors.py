"""User-facing errors: one line that names the offending field and what is allowed."""


class LongRoPE2Error(Exception):
    """Base class; the CLI prints these as a single line and exits with status 2."""


class ConfigError(LongRoPE2Error):
    def __init__(self, key: str, message: str):
        self.key = key
        super().__init__(f"{key}: {message}")
