"""Plots for users (matplotlib is an optional extra: pip install 'edgelearn[plot]') and the marked blocks of the docs' generated
tables."""

from __future__ import annotations

import numpy as np

from .errors import EdgelearnError


def replace_marked_block(text: str, name: str, block: str, where: str = "document") -> str:
    """`text` with what stands between `<!-- NAME:start -->` and `<!-- NAME:end -->` replaced by `block` (on lines of
    its own): how the tools and `firmware measure --doc` regenerate the tables in docs/. One-line error naming
    `where` when the markers are missing."""
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    if start not in text or end not in text:
        raise EdgelearnError(f"{where}: the markers {start} / {end} are missing")
    head, _, rest = text.partition(start)
    return f"{head}{start}\n{block}\n{end}{rest.partition(end)[2]}"


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        raise EdgelearnError("plotting needs matplotlib: pip install 'edgelearn[plot]'") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_replay(card, trace, path) -> None:
    """Measured vs replayed trajectory (left) and the card's step tables with the measured steps (right)."""
    from .devices import _local_steps, replay_trace

    plt = _pyplot()
    w = card.weight_from_conductance(trace.conductance_s)
    replayed = replay_trace(card.model, w, trace)
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    left.plot(w, "k.", ms=3, label="measured")
    left.plot(replayed, "r-", lw=1.2, label="replayed (card, no noise)")
    for k in np.nonzero(trace.anchors)[0][1:]:
        left.axvline(k, color="0.8", lw=0.8)
    left.set_xlabel("pulse")
    left.set_ylabel("normalised weight w")
    left.set_title(f"{card.card_id} on {trace.meta.source or trace.path}", fontsize=9)
    left.legend(fontsize=8)
    grid = np.linspace(card.model.w_min, card.model.w_max, 200)
    before, step, pol = _local_steps(w, trace)
    right.plot(before[pol < 0], step[pol < 0], "b.", ms=3, label="measured up steps")
    right.plot(before[pol > 0], step[pol > 0], "r.", ms=3, label="measured down steps")
    right.plot(grid, card.model.step_up(grid), "b-", label="card up")
    right.plot(grid, card.model.step_down(grid), "r-", label="card down")
    right.axvline(card.figures.symmetry_point, color="g", lw=1, label="symmetry point")
    right.set_xlabel("state w before the pulse")
    right.set_ylabel("|step| per pulse")
    right.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
