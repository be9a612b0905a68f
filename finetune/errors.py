"""The user's errors and ours.

A :class:`UserError` is something the person using the app or the CLI can fix: bad input, a missing
permission, something that is not there, a quota. Its message names the file, row, field and the fix, and
the UI and CLI show it as it is. Every other exception (AttributeError, TypeError, KeyError...) is a bug of
ours: the UI logs its traceback under the ``finetune.internal`` logger and shows ``internal error
(reference N)``; the CLI lets it propagate with its traceback; tests fail on it.

Each project error type subclasses UserError (and keeps its old base, e.g. ValueError, so that code catching
that keeps working):

>>> from finetune.config import ConfigError
>>> issubclass(ConfigError, UserError) and issubclass(ConfigError, ValueError)
True

A message is decided once, where the error is raised, in the words of each surface when they differ: the command
line's (``--quant q4_0``: its flags) is the message, the app's (``GGUF type q4_0``: its fields, which its API
parameters are named after) is given with :meth:`UserError.in_app`; the app shows :func:`app_message`:

>>> e = UserError("pass --push OWNER/NAME").in_app("fill in Push to Hub repo (OWNER/NAME)")
>>> str(e), app_message(e)
('pass --push OWNER/NAME', 'fill in Push to Hub repo (OWNER/NAME)')
"""

from __future__ import annotations

import itertools
import logging
import secrets
from typing import Self

INTERNAL_LOGGER = "finetune.internal"
internal_log = logging.getLogger(INTERNAL_LOGGER)


class UserError(Exception):
    """A request the user can fix; the message says how (``str(e)``: in the command line's words; ``app_text``: in
    the app's, when they differ)."""

    app_text: str | None = None

    def in_app(self, text: str) -> Self:
        """The same message in the app's words (its fields and API parameters, not the command line's flags)."""
        self.app_text = text
        return self

    def renamed(self, names: dict[str, str]) -> Self:
        """The app's message with each of ``names``' paths said as its name (an upload: the user's file name, not
        where the server keeps it); the command line's stays as it is."""
        text = app_message(self)
        for path, name in sorted(names.items(), key=lambda kv: -len(kv[0])):  # the longer path first
            if path:
                text = text.replace(path, name)
        if text != app_message(self):
            self.app_text = text
        return self


def app_message(e: BaseException) -> str:
    """What the app shows for the user's error ``e``: its message in the app's words when it has them, else its
    message (else its type's name)."""
    text = e.app_text if isinstance(e, UserError) and e.app_text else str(e)
    return text or e.__class__.__name__


class TrainingError(RuntimeError, UserError):
    """A run that could not start or went wrong; the message says what to change."""


class BadInputError(ValueError, UserError):
    """Input that cannot be used as given (a file, a row, a field): the message names it and the fix."""


# Exception types that only a mistake in our code raises on its own (a library raising one from a user's input is
# wrapped by us into a UserError where the input enters).
PROGRAMMING_ERRORS: tuple[type[BaseException], ...] = (AttributeError, TypeError, NameError, LookupError,
                                                         AssertionError, ImportError)


def is_programming_error(exc: BaseException) -> bool:
    """A bug of ours (not a UserError, and a type only code mistakes raise): never retried, never dressed as a
    message for the user."""
    return not isinstance(exc, UserError) and isinstance(exc, PROGRAMMING_ERRORS)


# A session-unique prefix plus a counter: short, unique within the log of one server process.
_PREFIX = secrets.token_hex(2)
_counter = itertools.count(1)


def report_internal(exc: BaseException, where: str = "") -> str:
    """Log ``exc`` with its traceback under ``finetune.internal`` and return the reference the user sees.

    >>> report_internal(AttributeError("x"), "demo")  # doctest: +SKIP
    '3f9a-1'
    """
    ref = f"{_PREFIX}-{next(_counter)}"
    internal_log.error("internal error (reference %s)%s", ref, f" in {where}" if where else "",
                       exc_info=(type(exc), exc, exc.__traceback__))
    return ref


def internal_message(ref: str) -> str:
    """What the user sees for a bug: no internals, a reference to find the traceback in the server's log."""
    return f"internal error (reference {ref})"
