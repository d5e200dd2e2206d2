"""Shared pieces of the exercise checkers."""


class ExerciseError(AssertionError):
    """An exercise answer that is not right yet; the message says what to look at."""


def passed(what: str) -> None:
    """Tell the reader that a check passed."""
    print(f"\N{CHECK MARK} {what}")


def require(ok: bool, message: str) -> None:
    """Raise an ExerciseError with ``message`` unless ``ok``."""
    if not ok:
        raise ExerciseError(message)


def call(fn, *args, **kwargs):
    """Call the reader's function, turning a missing solution into a readable message."""
    try:
        return fn(*args, **kwargs)
    except NotImplementedError as err:
        raise ExerciseError(f"{fn.__name__} is not written yet: replace the `raise NotImplementedError` "
                            "with your solution.") from err
