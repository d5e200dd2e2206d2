"""Pure plot functions: ``plot_x(..., ax=None)`` draws on ``ax`` (or a new figure) and returns the axes.

One file per topic; all reachable as ``vnas.plots.plot_...``.
"""

from vnas.plots.bridge import *  # noqa: F403
from vnas.plots.calibration import *  # noqa: F403
from vnas.plots.data import *  # noqa: F403
from vnas.plots.evidence import *  # noqa: F403
from vnas.plots.full_search import *  # noqa: F403
from vnas.plots.imagenet import *  # noqa: F403
from vnas.plots.robustness import *  # noqa: F403
from vnas.plots.search import *  # noqa: F403
from vnas.plots.simplex import *  # noqa: F403
