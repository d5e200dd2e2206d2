"""Exercise checkers: ``check_...(fn)`` runs a reader's function on test cases and returns a
``CheckResult`` (passed / wrong / not attempted, with the reason in words). In a chapter a result that
did not pass raises ``ExerciseError``, so the chapter stops there; ``check_...(fn, stop=False)`` only
returns it (for a grader). ``checker``, ``require`` and ``call`` are what a teacher's hidden checks are built
from (see vnas/grade.py).

Each chapter's checkers live in their own file; they are all reachable as ``vnas.checks.check_...``.
Introduced in chapters/00_welcome.py.
"""

from vnas.checks._common import (  # noqa: F401
    STATUSES,
    CheckResult,
    ExerciseError,
    NotAttempted,
    call,
    checker,
    require,
)
from vnas.checks.attacks import *  # noqa: F403
from vnas.checks.bayes import *  # noqa: F403
from vnas.checks.darts import *  # noqa: F403
from vnas.checks.data import *  # noqa: F403
from vnas.checks.elbo import *  # noqa: F403
from vnas.checks.full_search import *  # noqa: F403
from vnas.checks.imagenet import *  # noqa: F403
from vnas.checks.posterior import *  # noqa: F403
from vnas.checks.relaxations import *  # noqa: F403
