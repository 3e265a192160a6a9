"""Slide errors: each names the slide URI and says what to do about it.

Batch stages catch :class:`SlideError` per slide and record it in a failures
table; anything else is a bug.
"""

from __future__ import annotations


class SlideError(ValueError):
    """A slide that cannot be used as it is.

    Attributes:
        uri: the slide's URI.
        hint: what the user can do about it.
    """

    def __init__(self, uri: str, problem: str, hint: str = "") -> None:
        self.uri = uri
        self.problem = problem
        self.hint = hint
        message = f"{uri}: {problem}"
        if hint:
            message += f" ({hint})"
        super().__init__(message)

    def __reduce__(self):  # picklable across Ray workers
        return (type(self), (self.uri, self.problem, self.hint))


class SlideNotFoundError(SlideError, FileNotFoundError):
    """The object does not exist (or is not visible with the current credentials)."""


class EmptySlideError(SlideError):
    """The object has zero bytes."""


class UnsupportedSlideError(SlideError):
    """Not a format any installed reader can open."""


class CorruptSlideError(SlideError):
    """A slide whose file is damaged (truncated, bad tile data...)."""


class MissingMppError(SlideError):
    """The slide's resolution is unknown and no override was given."""


class BackendUnavailableError(RuntimeError):
    """A requested reader backend is not installed or cannot be used in this process."""
