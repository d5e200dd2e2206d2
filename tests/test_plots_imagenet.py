"""Chapter 08's plots draw what they are given and return their axes."""

import matplotlib
import numpy as np
import pytest

from vnas import plots

matplotlib.use("Agg")


def test_plot_transfer_draws_every_cell_the_top_and_the_marked():
    import matplotlib.pyplot as plt

    rng = np.random.default_rng(0)
    x = rng.uniform(10, 95, 200)
    y = x / 2 + rng.normal(0, 2, 200)
    ax = plots.plot_transfer(x, y, top=x > 90, marked={"best": (x.max(), y[x.argmax()])}, title="t")
    labels = ax.get_legend_handles_labels()[1]
    assert labels[0] == "all 200 cells" and labels[1] == f"top {(x > 90).sum()} by x" and labels[2] == "best"
    assert ax.get_title() == "t" and len(ax.collections) == 3
    fig, other = plt.subplots()
    assert plots.plot_transfer(x, y, ax=other) is other
    with pytest.raises(ValueError, match="same length"):
        plots.plot_transfer(x, y[:-1])
    plt.close("all")


def test_plot_percentiles_draws_each_series_with_its_interval():
    import matplotlib.pyplot as plt

    rows = {"a": {"CIFAR-10": ([60, 70, 80], 70.0, 12.0), "ImageNet16-120": ([55, 65, 75], 65.0, 10.0)},
            "b": {"CIFAR-10": ([40], 40.0, float("nan"))}}  # one seed: no bar
    ax = plots.plot_percentiles(rows, reference={"random cell": 50.0})
    assert [t.get_text() for t in ax.get_xticklabels()] == ["a", "b"]
    labels = ax.get_legend_handles_labels()[1]
    assert {"CIFAR-10", "ImageNet16-120", "random cell"} <= set(labels)
    plt.close("all")


def test_plot_budgets_places_networks_by_macs_and_parameters():
    import matplotlib.pyplot as plt

    ax = plots.plot_budgets({"NASNet-A": (5.3, 564)}, {"DARTS_V2": (4.72, 529.9)}, limit=600,
                            cloud=(np.array([4.0, 5.5]), np.array([450.0, 610.0])), title="budgets")
    labels = ax.get_legend_handles_labels()[1]
    assert labels == ["2 random cells (ours)", "published", "DARTS_V2", "budget 600 M"]
    assert [t.get_text() for t in ax.texts] == ["NASNet-A"]
    assert ax.texts[0].xy == (564, 5.3)  # x: multiply-adds, y: parameters
    plt.close("all")
