"""`--prune halving`: successive halving over a sweep's configs (Jamieson & Talwalkar, 2016).

Rungs sit at epochs ceil(E / 2^k) for k = 1, 2, … (E: the longest config's epochs), e.g. 2, 4 and 8 of 16. At each
rung the configs that reached it are ranked by that epoch's val top-1 (ties: lower val loss, then config order); the
better half (rounded up) goes on, the rest stop there. The ranking reads every member's `TrainState.val_history`,
never the order members finished in, so a resumed sweep prunes exactly as an uninterrupted one.
"""

from __future__ import annotations

import math

from vivitcache.training.member import Member


def rungs(epochs: int) -> list[int]:
    """The epochs after which configs are pruned, ascending (none for a 1-epoch sweep)."""
    points, k = set(), 1
    while math.ceil(epochs / 2**k) >= 1 and 2**k <= epochs:
        points.add(math.ceil(epochs / 2**k))
        k += 1
    return sorted(p for p in points if p < epochs)


def halving(epochs: int):
    """A `fit_many` prune function for a sweep whose longest config trains `epochs` epochs."""
    points = set(rungs(epochs))

    def prune(done: int, members: list[Member]) -> list[Member]:
        if done not in points:
            return []
        # the configs that reached this rung: still training, or stopped here (a resumed sweep); those that ended
        # sooner (pruned at an earlier rung) or end here anyway (no more epochs of their own) are out of it
        reached = [(i, m) for i, m in enumerate(members) if len(m.state.val_history) >= done < m.optim.epochs and
                   (m.state.stopped is None or m.state.stopped == f"pruned after epoch {done}")]
        ranked = sorted(reached, key=lambda im: (-(im[1].state.val_history[done - 1][0] or 0.0),
                                                 im[1].state.val_history[done - 1][1] or 0.0, im[0]))
        keep = math.ceil(len(ranked) / 2)
        return [m for _, m in ranked[keep:] if m.state.stopped is None]

    return prune
