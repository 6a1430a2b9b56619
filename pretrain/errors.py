"""Errors meant for the person running hetron: the CLI prints them as one line and exits non-zero."""


class HetronError(Exception):
    """A bad input (config, file, data, plan) that the user can fix; the message says what and where."""


class ConfigError(HetronError):
    """A config key, value or combination that is not allowed."""
