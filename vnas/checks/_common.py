"""Shared pieces of the exercise checkers: the structured result every checker returns, and the helpers
that checker bodies use.

A checker body takes the reader's function and returns, when every case passes, one sentence saying what
passed; when something is wrong it raises ``ExerciseError`` with what to look at (``require``). The
``checker`` decorator turns the body into ``check_...(fn, stop=True) -> CheckResult``:
- status "passed", "wrong" or "not attempted" (the stub still raises NotImplementedError), with the reason;
- in a chapter (``stop=True``) a result that did not pass raises ``ExerciseError``, so the chapter stops
  at a wrong answer; a grader calls ``check_...(fn, stop=False)`` and reads the result.
Introduced in chapters/00_welcome.py.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

STATUSES = ("passed", "wrong", "not attempted")


class ExerciseError(AssertionError):
    """An exercise answer that is not right yet; the message says what to look at. ``result`` is the
    structured result when the error comes from a checker."""

    def __init__(self, message: str, result: CheckResult | None = None):
        super().__init__(message)
        self.result = result


class NotAttempted(ExerciseError):
    """The reader's function is still the stub (it raises NotImplementedError)."""


@dataclass(frozen=True)
class CheckResult:
    """What a checker found: the exercise (the checker's name), a status in ``STATUSES``, and why."""

    exercise: str
    status: str
    reason: str

    @property
    def passed(self) -> bool:
        return self.status == "passed"

    def __str__(self) -> str:
        mark = {"passed": "\N{CHECK MARK}", "wrong": "\N{BALLOT X}", "not attempted": "?"}[self.status]
        return f"{mark} {self.exercise}: {self.status}. {self.reason}"

    __repr__ = __str__  # what a notebook shows when a check ends a cell


def checker(body):
    """Decorator: ``body(fn, ...) -> str`` becomes ``check(fn, ..., stop=True) -> CheckResult``."""
    name = body.__name__.removeprefix("check_")

    @functools.wraps(body)
    def check(fn, *args, stop: bool = True, **kwargs) -> CheckResult:
        try:
            result = CheckResult(name, "passed", body(fn, *args, **kwargs))
        except NotAttempted as err:
            result = CheckResult(name, "not attempted", str(err))
        except ExerciseError as err:
            result = CheckResult(name, "wrong", str(err))
        if stop and not result.passed:
            raise (NotAttempted if result.status == "not attempted" else ExerciseError)(result.reason, result)
        return result

    return check


def require(ok: bool, message: str) -> None:
    """Raise an ExerciseError with ``message`` unless ``ok``."""
    if not ok:
        raise ExerciseError(message)


def call(fn, *args, **kwargs):
    """Call the reader's function: a stub is "not attempted"; an exception it raises is a wrong answer
    that names the exception."""
    name = getattr(fn, "__name__", "your function")
    try:
        return fn(*args, **kwargs)
    except NotImplementedError as err:
        raise NotAttempted(f"{name} is not written yet: replace the `raise NotImplementedError` with your "
                           "solution.") from err
    except ExerciseError:
        raise
    except Exception as err:
        raise ExerciseError(f"{name} raised {type(err).__name__}: {err}") from err
