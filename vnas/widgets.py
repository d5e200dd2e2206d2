"""Thin interactive wrappers around the pure plot functions.

In smoke mode (CI) the plot function is called directly with its defaults: headless kernels
sometimes stall on building an ``interact`` (nbconvert issues #1921, #2029), and an exception
raised inside an ``interact`` callback is stored in the widget instead of failing the cell.
Introduced in chapters/00_welcome.py.
"""

from __future__ import annotations

import inspect

from vnas import config


def _defaults(plot_fn, controls: dict) -> dict:
    """Keyword defaults of ``plot_fn`` for the controlled arguments (the values a reader starts with)."""
    params = inspect.signature(plot_fn).parameters
    missing = [name for name in controls if name not in params]
    if missing:
        raise TypeError(f"{plot_fn.__name__} has no argument(s) {missing}; controls must name its keywords.")
    no_default = [n for n in controls if params[n].default is inspect.Parameter.empty]
    if no_default:
        raise TypeError(f"{plot_fn.__name__}: give defaults for {no_default} so the static figure is defined.")
    return {name: params[name].default for name in controls}


def explore(plot_fn, fixed: dict | None = None, **controls):
    """Sliders/dropdowns for ``plot_fn``'s keyword arguments (ipywidgets abbreviations).

    ``fixed`` holds arguments passed unchanged (data, models). Returns the widget, or in smoke
    mode the static figure drawn with the defaults.
    """
    fixed = dict(fixed or {})
    defaults = _defaults(plot_fn, controls)
    if config.mode() == "smoke":
        return plot_fn(**fixed, **defaults)

    import ipywidgets as widgets
    import matplotlib.pyplot as plt

    def draw(**values):
        plot_fn(**fixed, **values)
        plt.show()

    wrapped = {}
    for name, abbrev in controls.items():
        value = defaults[name]
        if isinstance(abbrev, tuple) and len(abbrev) in (2, 3) and all(isinstance(a, (int, float)) for a in abbrev):
            cls = widgets.FloatSlider if any(isinstance(a, float) for a in (*abbrev, value)) else widgets.IntSlider
            step = abbrev[2] if len(abbrev) == 3 else (1 if cls is widgets.IntSlider else (abbrev[1] - abbrev[0]) / 100)
            wrapped[name] = cls(value=value, min=abbrev[0], max=abbrev[1], step=step, description=name,
                                continuous_update=False)
        elif isinstance(abbrev, (list, tuple)):
            wrapped[name] = widgets.Dropdown(options=list(abbrev), value=value, description=name)
        else:
            wrapped[name] = abbrev  # already a widget
    return widgets.interactive(draw, **wrapped)
