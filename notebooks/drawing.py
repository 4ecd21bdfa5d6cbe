"""Drawing code shared by the notebooks: a draft tree, one column per depth (notebooks 02 and 04)."""
from __future__ import annotations

GREEN, GREY, RED = "#8fd18f", "#dddddd", "#f4a3a3"  # accepted, rejected, pruned


def tree_layout(parents: list[int], depths: list[int]) -> dict[int, tuple[float, float]]:
    """(x, y) of every node: x = depth; leaves one below the other in depth-first order, a parent at the mean
    height of its children. parents[i] = -1 for the root (node 0)."""
    children: dict[int, list[int]] = {i: [] for i in range(len(parents))}
    for i, p in enumerate(parents):
        if p >= 0:
            children[p].append(i)
    ys: dict[int, float] = {}

    def place(i: int):
        if not children[i]:
            ys[i] = len([j for j in ys if not children[j]])  # the next free row
            return
        for c in children[i]:
            place(c)
        ys[i] = sum(ys[c] for c in children[i]) / len(children[i])

    place(0)
    return {i: (depths[i], -ys[i]) for i in range(len(parents))}


def draw_tree(ax, tree, labels: list[str], colors: list[str], title: str, notes: list[str] | None = None):
    """Draw a `tree.Tree` on a matplotlib axis: one box per node with its label and colour, and an optional
    note under each box (e.g. the main stream's argmax there)."""
    depths = tree.depths.tolist()
    pos = tree_layout(tree.parents.tolist(), depths)
    for i, p in enumerate(tree.parents.tolist()):
        if p >= 0:
            ax.plot([pos[p][0], pos[i][0]], [pos[p][1], pos[i][1]], color="0.6", lw=1, zorder=1)
    for i, (x, y) in pos.items():
        ax.text(x, y, labels[i], ha="center", va="center", fontsize=8, zorder=2,
                bbox=dict(boxstyle="round", fc=colors[i], ec="0.3"))
        if notes:
            ax.text(x, y - 0.36, notes[i], ha="center", va="top", fontsize=6.5, color="0.25")
    ax.set_xticks(range(max(depths) + 1))
    ax.set_xlabel("depth (depth j drafted by stream j)")
    ax.set_yticks([])
    ax.set_xlim(-0.6, max(depths) + 0.6)
    ax.set_ylim(min(y for _, y in pos.values()) - 0.8, 0.6)
    ax.set_title(title)
