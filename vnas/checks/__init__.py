"""Exercise checkers: ``check_...(fn)`` runs a reader's function on test cases and says in words
what is wrong (an AssertionError), or prints one line saying what passed.

Each chapter's checkers live in their own file; they are all reachable as ``vnas.checks.check_...``.
Introduced in chapters/00_welcome.py.
"""

from vnas.checks._common import ExerciseError, passed  # noqa: F401
from vnas.checks.darts import *  # noqa: F403
from vnas.checks.data import *  # noqa: F403
from vnas.checks.elbo import *  # noqa: F403
from vnas.checks.posterior import *  # noqa: F403
from vnas.checks.relaxations import *  # noqa: F403
