"""Drawing code shared by the notebooks: a draft tree, one column per depth (notebooks 02 and 04)."""
from __future__ import annotations

GREEN, GREY, RED, GOLD = "#8fd18f", "#dddddd", "#f4a3a3", "#ffd966"  # accepted, rejected, pruned, bonus token


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


def draw_tree(ax, tree, labels: list[str], colors: list[str], title: str, notes: list[str] | None = None,
              bonus: tuple[int, str] | None = None):
    """Draw a `tree.Tree` on a matplotlib axis: one box per node with its label and colour, an optional note under
    each box (e.g. the main stream's argmax there), and optionally the bonus token: (node, label), drawn as a gold
    box after that node, joined by a dashed line (it is committed, but it is not a node of the tree)."""
    depths = tree.depths.tolist()
    pos = tree_layout(tree.parents.tolist(), depths)
    if bonus is not None:
        node, label = bonus
        x, y = pos[node][0] + 1, pos[node][1]
        ax.plot([pos[node][0], x], [y, y], color="0.4", lw=1, ls="--", zorder=1)
        ax.text(x, y, label, ha="center", va="center", fontsize=8, zorder=2,
                bbox=dict(boxstyle="round", fc=GOLD, ec="0.3", ls="--"))
        depths = depths + [depths[node] + 1]
    for i, p in enumerate(tree.parents.tolist()):
        if p >= 0:
            ax.plot([pos[p][0], pos[i][0]], [pos[p][1], pos[i][1]], color="0.6", lw=1, zorder=1)
    for i, (x, y) in pos.items():
        ax.text(x, y, labels[i], ha="center", va="center", fontsize=8, zorder=2,
                bbox=dict(boxstyle="round", fc=colors[i], ec="0.3"))
        if notes:
            ax.text(x, y - 0.36, notes[i], ha="center", va="top", fontsize=6.5, color="0.25")
    ax.set_xticks(range(max(depths) + 1))  # (depths includes the bonus token's column when it is drawn)
    ax.set_xlabel("depth (depth j drafted by stream j)")
    ax.set_yticks([])
    ax.set_xlim(-0.6, max(depths) + 0.6)
    ax.set_ylim(min(y for _, y in pos.values()) - 0.8, 0.6)
    ax.set_title(title)
