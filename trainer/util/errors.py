"""User-facing error types. Every message is meant to be shown to a person as it is."""


class AllguiError(Exception):
    """Base class for errors whose message is fit to show a user."""


class ImageReadError(AllguiError):
    """An image file could not be read or decoded."""


class DataError(AllguiError):
    """A data folder is empty, has one class only, or is laid out in a way we cannot read."""


class BundleError(AllguiError):
    """A model bundle is missing, truncated, tampered with, foreign or from an incompatible version."""


class Cancelled(AllguiError):
    """Long-running work was cancelled by the user."""

    def __init__(self, message: str = "Cancelled by the user.") -> None:
        super().__init__(message)
