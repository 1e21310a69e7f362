"""Errors a user can cause. The CLI prints their message and exits non-zero, without a traceback."""


class VaekitError(Exception):
    """Base class: something about the user's input, files or options is wrong."""


class DataError(VaekitError):
    """A data source is missing, unreadable or holds values vaekit cannot use."""


class ModelFileError(VaekitError):
    """A run folder is not a loadable vaekit model."""


class OptionError(VaekitError):
    """An option or argument has a value outside its allowed range."""
