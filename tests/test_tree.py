"""Unit tests of tree.py (docs/CONVENTIONS.md) on small hand-made trees; expected values are written out literally.

Trees are flat and breadth first: node 0 is the root, parents come before their children, depth-j nodes hold
candidates drafted from stream j.
"""
import pytest
import torch

from tree import Tree, draft_tree, full_tree_shape, position_ids, prune_tree, subtree, tree_attention_mask, verify_greedy

T, F_ = True, False


def make_tree(tokens, parents, scores=None) -> Tree:
    """A Tree built by hand, independently of tree.py: depths and the ancestor-or-self matrix from `parents`."""
    n = len(tokens)
    depths, ancestors = [], torch.zeros(n, n, dtype=torch.bool)
    for i, p in enumerate(parents):
        assert p < i, "breadth first: parents come first"
        depths.append(0 if p < 0 else depths[p] + 1)
        if p >= 0:
            ancestors[i] = ancestors[p]
        ancestors[i, i] = True
    scores = torch.ones(n, dtype=torch.float64) if scores is None else torch.tensor(scores, dtype=torch.float64)
    return Tree(torch.tensor(tokens), torch.tensor(parents), torch.tensor(depths), scores, ancestors)


# the full binary tree of depth 2, root token 7, drafted from stream tables [[3, 5], [9, 2]]
#            0:7
#        /         \
#     1:3           2:5
#    /    \        /    \
#  3:9   4:2     5:9   6:2
FULL22_PARENTS = [-1, 0, 0, 1, 1, 2, 2]
FULL22_ANCESTORS = [
    [T, F_, F_, F_, F_, F_, F_],
    [T, T, F_, F_, F_, F_, F_],
    [T, F_, T, F_, F_, F_, F_],
    [T, T, F_, T, F_, F_, F_],
    [T, T, F_, F_, T, F_, F_],
    [T, F_, T, F_, F_, T, F_],
    [T, F_, T, F_, F_, F_, T],
]


def full22():
    return make_tree([7, 3, 5, 9, 2, 9, 2], FULL22_PARENTS)


def assert_tree(tree: Tree, tokens, parents, depths, ancestors):
    assert tree.tokens.tolist() == tokens
    assert tree.parents.tolist() == parents
    assert tree.depths.tolist() == depths
    assert tree.ancestors.tolist() == ancestors
    assert len(tree) == len(tokens)


def assert_well_formed(tree: Tree):
    """Breadth first, parents before children, depths and ancestors consistent with parents."""
    ref = make_tree(tree.tokens.tolist(), tree.parents.tolist())
    assert tree.depths.tolist() == ref.depths.tolist()
    assert torch.equal(tree.ancestors, ref.ancestors)


# ------------------------------------------------------------------------------------------------------------
# full_tree_shape
# ------------------------------------------------------------------------------------------------------------

def test_full_tree_shape_depth2_k2_literal():
    parents, depths, ranks, ancestors = full_tree_shape(2, 2)
    assert parents.tolist() == [-1, 0, 0, 1, 1, 2, 2]
    assert depths.tolist() == [0, 1, 1, 2, 2, 2, 2]
    assert ranks.tolist() == [0, 0, 1, 0, 1, 0, 1]
    assert ancestors.tolist() == FULL22_ANCESTORS


def test_full_tree_shape_depth3_k1_is_a_chain():
    parents, depths, ranks, ancestors = full_tree_shape(3, 1)
    assert parents.tolist() == [-1, 0, 1, 2]
    assert depths.tolist() == [0, 1, 2, 3]
    assert ranks.tolist() == [0, 0, 0, 0]
    assert ancestors.tolist() == [[T, F_, F_, F_], [T, T, F_, F_], [T, T, T, F_], [T, T, T, T]]


def test_full_tree_shape_depth1_k3_literal():
    parents, depths, ranks, ancestors = full_tree_shape(1, 3)
    assert parents.tolist() == [-1, 0, 0, 0]
    assert depths.tolist() == [0, 1, 1, 1]
    assert ranks.tolist() == [0, 0, 1, 2]
    assert ancestors.tolist() == [[T, F_, F_, F_], [T, T, F_, F_], [T, F_, T, F_], [T, F_, F_, T]]


@pytest.mark.parametrize("depth,k,n", [(0, 1, 1), (0, 3, 1), (1, 1, 2), (1, 3, 4), (2, 2, 7), (2, 3, 13),
                                       (3, 2, 15), (4, 1, 5), (3, 3, 40), (4, 3, 121)])
def test_full_tree_shape_sizes_and_structure(depth, k, n):
    parents, depths, ranks, ancestors = full_tree_shape(depth, k)
    assert len(parents) == len(depths) == len(ranks) == n == 1 + sum(k ** d for d in range(1, depth + 1))
    assert ancestors.shape == (n, n)
    # every depth-d node has exactly d ancestors plus itself, every non-leaf has k children of ranks 0..k-1
    assert ancestors.sum(1).tolist() == [d + 1 for d in depths.tolist()]
    for i in range(n):
        children = (parents == i).nonzero().flatten().tolist()
        assert len(children) == (k if depths[i] < depth else 0)
        assert ranks[children].tolist() == list(range(len(children)))
    ref = make_tree([0] * n, parents.tolist())
    assert torch.equal(ref.depths, depths) and torch.equal(ref.ancestors, ancestors)


# ------------------------------------------------------------------------------------------------------------
# draft_tree
# ------------------------------------------------------------------------------------------------------------

def test_draft_tree_places_tokens_and_multiplies_probabilities():
    tokens = torch.tensor([[3, 5], [9, 2]])  # row j-1 = top-k of stream j
    probs = torch.tensor([[0.6, 0.3], [0.5, 0.25]])
    tree = draft_tree(7, tokens, probs)
    assert_tree(tree, [7, 3, 5, 9, 2, 9, 2], FULL22_PARENTS, [0, 1, 1, 2, 2, 2, 2], FULL22_ANCESTORS)
    torch.testing.assert_close(tree.scores.double(), torch.tensor([1.0, 0.6, 0.3, 0.3, 0.15, 0.15, 0.075],
                                                                  dtype=torch.float64), rtol=1e-6, atol=1e-7)


def test_draft_tree_depth3_k2_token_layout():
    tokens = torch.tensor([[10, 11], [20, 21], [30, 31]])
    probs = torch.tensor([[0.5, 0.4], [0.5, 0.4], [0.5, 0.4]], dtype=torch.float64)
    tree = draft_tree(1, tokens, probs)
    assert tree.tokens.tolist() == [1, 10, 11, 20, 21, 20, 21, 30, 31, 30, 31, 30, 31, 30, 31]
    assert tree.parents.tolist() == [-1, 0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6]
    # path of node 12 (token 31): 0 -> 2 (11, p .4) -> 5 (20, p .5) -> 12 (31, p .4)
    assert tree.path_to(12) == [0, 2, 5, 12]
    assert float(tree.scores[12]) == pytest.approx(0.4 * 0.5 * 0.4, rel=1e-9)
    assert float(tree.scores[7]) == pytest.approx(0.125, rel=1e-9)


def test_draft_tree_root_only():
    tree = draft_tree(4, torch.zeros(0, 2, dtype=torch.long), torch.zeros(0, 2))
    assert_tree(tree, [4], [-1], [0], [[T]])
    assert tree.scores.tolist() == [1.0]


def test_draft_tree_zero_probability_gives_zero_scores_not_nan():
    """A stream probability can underflow to exactly 0 in a float32 softmax (logit gap > ~104); the path
    product is then 0 for that node and its subtree, and every other score is unaffected."""
    tokens = torch.tensor([[3, 5], [9, 2]])
    probs = torch.tensor([[0.75, 0.0], [0.5, 0.25]])
    tree = draft_tree(7, tokens, probs)
    assert not torch.isnan(tree.scores).any(), f"scores {tree.scores.tolist()}"
    torch.testing.assert_close(tree.scores.double(), torch.tensor([1.0, 0.75, 0.0, 0.375, 0.1875, 0.0, 0.0],
                                                                  dtype=torch.float64), rtol=1e-6, atol=1e-7)
    # the cap must still keep the best nodes. Scores here: 0: 1, 1: .5, 2: .4, 3: 0, 4: .45, 5-6: .025,
    # 7: .36, 8-9: .02, 10-12: 0; the best three are 0, 1, 4 (not the breadth-first prefix 0, 1, 2)
    tokens3 = torch.tensor([[3, 5, 6], [9, 2, 8]])
    probs3 = torch.tensor([[0.5, 0.4, 0.0], [0.9, 0.05, 0.05]])
    capped = draft_tree(7, tokens3, probs3, cap=3)
    assert capped.tokens.tolist() == [7, 3, 9]
    assert capped.parents.tolist() == [-1, 0, 1]
    torch.testing.assert_close(capped.scores.double(), torch.tensor([1.0, 0.5, 0.45], dtype=torch.float64),
                               rtol=1e-6, atol=1e-7)


CAP_TOKENS = torch.tensor([[3, 5], [9, 2]])
CAP_PROBS = torch.tensor([[0.9, 0.1], [0.8, 0.15]])  # scores: 1, .9, .1, .72, .135, .08, .015


@pytest.mark.parametrize("cap,tokens,parents,depths,ancestors,scores", [
    (1, [7], [-1], [0], [[T]], [1.0]),
    (2, [7, 3], [-1, 0], [0, 1], [[T, F_], [T, T]], [1.0, 0.9]),
    (3, [7, 3, 9], [-1, 0, 1], [0, 1, 2], [[T, F_, F_], [T, T, F_], [T, T, T]], [1.0, 0.9, 0.72]),
    (4, [7, 3, 9, 2], [-1, 0, 1, 1], [0, 1, 2, 2],
     [[T, F_, F_, F_], [T, T, F_, F_], [T, T, T, F_], [T, T, F_, T]], [1.0, 0.9, 0.72, 0.135]),
    (5, [7, 3, 5, 9, 2], [-1, 0, 0, 1, 1], [0, 1, 1, 2, 2],
     [[T, F_, F_, F_, F_], [T, T, F_, F_, F_], [T, F_, T, F_, F_], [T, T, F_, T, F_], [T, T, F_, F_, T]],
     [1.0, 0.9, 0.1, 0.72, 0.135]),
    (6, [7, 3, 5, 9, 2, 9], [-1, 0, 0, 1, 1, 2], [0, 1, 1, 2, 2, 2],
     [[T, F_, F_, F_, F_, F_], [T, T, F_, F_, F_, F_], [T, F_, T, F_, F_, F_], [T, T, F_, T, F_, F_],
      [T, T, F_, F_, T, F_], [T, F_, T, F_, F_, T]],
     [1.0, 0.9, 0.1, 0.72, 0.135, 0.08]),
])
def test_draft_tree_capped_keeps_best_nodes_reindexed(cap, tokens, parents, depths, ancestors, scores):
    tree = draft_tree(7, CAP_TOKENS, CAP_PROBS, cap=cap)
    assert_tree(tree, tokens, parents, depths, ancestors)
    torch.testing.assert_close(tree.scores.double(), torch.tensor(scores, dtype=torch.float64), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("cap", [7, 8, 100])
def test_draft_tree_cap_at_least_full_size_is_the_full_tree(cap):
    full = draft_tree(7, CAP_TOKENS, CAP_PROBS)
    capped = draft_tree(7, CAP_TOKENS, CAP_PROBS, cap=cap)
    assert len(full) == 7
    for name in ("tokens", "parents", "depths", "scores", "ancestors"):
        assert torch.equal(getattr(full, name), getattr(capped, name)), name


@pytest.mark.parametrize("seed", range(12))
def test_draft_tree_capped_random_tables_are_ancestor_closed_and_best(seed):
    g = torch.Generator().manual_seed(seed)
    depth, k = 1 + seed % 4, 1 + seed % 3
    probs = torch.rand(depth, k, generator=g, dtype=torch.float64).sort(dim=1, descending=True).values
    if seed % 2:  # ties, including certain drafts
        probs = (probs * 4).round().clamp(min=1) / 4
    tokens = torch.stack([torch.randperm(50, generator=g)[:k] for _ in range(depth)])
    full = draft_tree(0, tokens, probs)
    for cap in range(1, len(full) + 1):
        tree = draft_tree(0, tokens, probs, cap=cap)
        assert len(tree) == cap
        assert_well_formed(tree)  # every parent kept and re-indexed, before its children
        # kept nodes are a top-`cap` set of the full tree by score: none dropped scores higher than a kept one
        kept_paths = {tuple(tree.tokens[tree.path_to(i)].tolist()) for i in range(cap)}
        full_paths = [tuple(full.tokens[full.path_to(i)].tolist()) for i in range(len(full))]
        kept_mask = torch.tensor([p in kept_paths for p in full_paths])
        assert int(kept_mask.sum()) == cap
        if cap < len(full):
            assert full.scores[kept_mask].min() >= full.scores[~kept_mask].max()


def test_draft_tree_capped_ties_with_certain_drafts_keep_parents():
    """Probability 1.0 makes a child's score equal its parent's: the parent must still win the tie."""
    tokens = torch.tensor([[3, 5], [9, 2]])
    probs = torch.tensor([[1.0, 0.5], [1.0, 0.5]])  # scores: 1, 1, .5, 1, .5, .5, .25
    assert_tree(draft_tree(7, tokens, probs, cap=2), [7, 3], [-1, 0], [0, 1], [[T, F_], [T, T]])
    assert_tree(draft_tree(7, tokens, probs, cap=3), [7, 3, 9], [-1, 0, 1], [0, 1, 2],
                [[T, F_, F_], [T, T, F_], [T, T, T]])
    # all drafts certain: every score is 1, the cap keeps a breadth-first prefix
    ones = torch.ones(3, 2)
    tree = draft_tree(7, torch.tensor([[3, 5], [9, 2], [4, 6]]), ones, cap=5)
    assert tree.parents.tolist() == [-1, 0, 0, 1, 1]
    assert tree.tokens.tolist() == [7, 3, 5, 9, 2]


# ------------------------------------------------------------------------------------------------------------
# tree_attention_mask, position_ids
# ------------------------------------------------------------------------------------------------------------

def test_tree_attention_mask_literal_cache3():
    tree = make_tree([7, 3, 9, 2], [-1, 0, 1, 1])
    mask = tree_attention_mask(tree, 3)
    assert mask.dtype == torch.bool
    assert mask.tolist() == [
        # cache     root  3     9     2
        [T, T, T,   T,    F_,   F_,   F_],
        [T, T, T,   T,    T,    F_,   F_],
        [T, T, T,   T,    T,    T,    F_],
        [T, T, T,   T,    T,    F_,   T],
    ]
    assert position_ids(tree, 3).tolist() == [3, 4, 5, 5]


def test_tree_attention_mask_full22_cache0_and_positions():
    tree = full22()
    assert tree_attention_mask(tree, 0).tolist() == FULL22_ANCESTORS
    assert tree_attention_mask(tree, 2).tolist() == [[T, T] + row for row in FULL22_ANCESTORS]
    assert position_ids(tree, 10).tolist() == [10, 11, 11, 12, 12, 12, 12]
    assert position_ids(tree, 0).tolist() == [0, 1, 1, 2, 2, 2, 2]


# ------------------------------------------------------------------------------------------------------------
# prune_tree
# ------------------------------------------------------------------------------------------------------------

def early_exit_table(n, vocab, entries, fill=0.01):
    """(n, vocab) early-exit probabilities: `fill` everywhere except entries {(row, token): p}."""
    probs = torch.full((n, vocab), fill, dtype=torch.float64)
    for (row, token), p in entries.items():
        probs[row, token] = p
    return probs


# full22 tokens: 0:7, 1:3, 2:5, 3:9, 4:2, 5:9, 6:2. A node's probability is read at its parent's row.
PRUNE_PROBS = early_exit_table(7, 10, {
    (0, 7): 1e-12,  # the root's own token, read at its own row: tiny, but the root is never pruned
    (0, 3): 0.5,    # node 1
    (0, 5): 0.01,   # node 2: dropped at threshold 0.05, with nodes 5 and 6
    (1, 9): 0.25,   # node 3
    (1, 2): 0.02,   # node 4: dropped at threshold 0.05
    (2, 9): 0.9,    # node 5: high, but its parent (2) is dropped
    (2, 2): 0.3,    # node 6: idem
})


@pytest.mark.parametrize("threshold,expected", [
    (0.0, [0, 1, 2, 3, 4, 5, 6]),
    (0.005, [0, 1, 2, 3, 4, 5, 6]),
    (0.015, [0, 1, 3, 4]),  # node 2 (0.01) and its subtree go; node 4 (0.02) stays
    (0.05, [0, 1, 3]),
    (0.25, [0, 1, 3]),   # 0.25 is not below 0.25
    (0.26, [0, 1]),
    (0.6, [0]),          # everything below the root is dropped; the root survives
    (0.999, [0]),
])
def test_prune_tree_drops_subtrees_keeps_root(threshold, expected):
    assert prune_tree(full22(), PRUNE_PROBS, threshold).tolist() == expected


def test_prune_tree_root_uses_its_own_row_and_is_never_pruned():
    tree = make_tree([4], [-1])
    probs = torch.zeros(1, 10, dtype=torch.float64)  # the root's token has probability 0 at its own row
    assert prune_tree(tree, probs, 0.5).tolist() == [0]
    # in a larger tree the root stays even when its own-row probability is tiny and children are dropped
    assert prune_tree(full22(), early_exit_table(7, 10, {}, fill=0.0), 0.1).tolist() == [0]


def test_prune_tree_irregular_tree():
    # 0:1 -> 1:2 -> 3:4 -> 4:5 ; 0:1 -> 2:3
    tree = make_tree([1, 2, 3, 4, 5], [-1, 0, 0, 1, 3])
    probs = early_exit_table(5, 8, {(0, 2): 0.8, (0, 3): 0.8, (1, 4): 0.8, (3, 5): 0.01})
    assert prune_tree(tree, probs, 0.1).tolist() == [0, 1, 2, 3]
    probs = early_exit_table(5, 8, {(0, 2): 0.8, (0, 3): 0.8, (1, 4): 0.01, (3, 5): 0.9})
    assert prune_tree(tree, probs, 0.1).tolist() == [0, 1, 2]


# ------------------------------------------------------------------------------------------------------------
# verify_greedy
# ------------------------------------------------------------------------------------------------------------

def argmax_table(n, entries, default=0):
    out = torch.full((n,), default, dtype=torch.long)
    for node, token in entries.items():
        out[node] = token
    return out


@pytest.mark.parametrize("entries,path", [
    ({0: 4}, [0]),                    # the main stream wants 4 after the root: no draft matches
    ({0: 5, 2: 1}, [0, 2]),           # 5 accepted (node 2), then 1 matches neither 9 nor 2
    ({0: 5, 2: 2}, [0, 2, 6]),        # full depth, second branch
    ({0: 3, 1: 9}, [0, 1, 3]),        # full depth, first branch
    ({0: 3, 1: 2, 2: 9}, [0, 1, 4]),  # node 5 would match at node 2, but node 2 is rejected
    ({0: 4, 1: 9, 2: 2}, [0]),        # deeper nodes match at their parents, their parents are rejected
    ({0: 3, 1: 0, 2: 9}, [0, 1]),     # node 5 matches at its (rejected) parent: not accepted
])
def test_verify_greedy_full22(entries, path):
    assert verify_greedy(full22(), argmax_table(7, entries)) == path


def test_verify_greedy_root_only_and_chain():
    assert verify_greedy(make_tree([4], [-1]), torch.tensor([9])) == [0]
    chain = make_tree([4, 5, 6, 7], [-1, 0, 1, 2])
    assert verify_greedy(chain, torch.tensor([5, 6, 7, 8])) == [0, 1, 2, 3]
    assert verify_greedy(chain, torch.tensor([5, 6, 0, 8])) == [0, 1, 2]
    assert verify_greedy(chain, torch.tensor([5, 0, 7, 8])) == [0, 1]
    assert verify_greedy(chain, torch.tensor([0, 6, 7, 8])) == [0]


def test_verify_greedy_irregular_capped_tree():
    # 0:7 -> 1:3 -> {3:9, 4:2 -> 5:8}; 0:7 -> 2:5
    tree = make_tree([7, 3, 5, 9, 2, 8], [-1, 0, 0, 1, 1, 4])
    assert verify_greedy(tree, argmax_table(6, {0: 3, 1: 2, 4: 8})) == [0, 1, 4, 5]
    assert verify_greedy(tree, argmax_table(6, {0: 3, 1: 9, 3: 1})) == [0, 1, 3]
    assert verify_greedy(tree, argmax_table(6, {0: 5, 2: 8, 4: 8})) == [0, 2]  # node 5 matches, 4 rejected


# ------------------------------------------------------------------------------------------------------------
# subtree, path_to
# ------------------------------------------------------------------------------------------------------------

def test_subtree_reindexes_parents_and_ancestors():
    tree = make_tree([7, 3, 5, 9, 2, 9, 2], FULL22_PARENTS, scores=[1.0, 0.6, 0.3, 0.3, 0.15, 0.15, 0.075])
    sub = subtree(tree, torch.tensor([0, 2, 5, 6]))
    assert_tree(sub, [7, 5, 9, 2], [-1, 0, 1, 1], [0, 1, 2, 2],
                [[T, F_, F_, F_], [T, T, F_, F_], [T, T, T, F_], [T, T, F_, T]])
    assert sub.scores.tolist() == [1.0, 0.3, 0.15, 0.075]
    sub = subtree(tree, torch.tensor([0, 1, 2, 4]))
    assert_tree(sub, [7, 3, 5, 2], [-1, 0, 0, 1], [0, 1, 1, 2],
                [[T, F_, F_, F_], [T, T, F_, F_], [T, F_, T, F_], [T, T, F_, T]])
    assert sub.path_to(3) == [0, 1, 3]
    sub = subtree(tree, torch.tensor([0]))
    assert_tree(sub, [7], [-1], [0], [[T]])
    # keeping everything changes nothing
    sub = subtree(tree, torch.arange(7))
    assert_tree(sub, tree.tokens.tolist(), FULL22_PARENTS, tree.depths.tolist(), FULL22_ANCESTORS)


def test_subtree_of_pruned_tree_then_verify():
    """The pipeline of a decode call: prune, re-index, verify on the survivors."""
    tree = full22()
    kept = prune_tree(tree, PRUNE_PROBS, 0.015)
    assert kept.tolist() == [0, 1, 3, 4]
    sub = subtree(tree, kept)
    assert sub.parents.tolist() == [-1, 0, 1, 1]
    assert verify_greedy(sub, torch.tensor([3, 2, 0, 0])) == [0, 1, 3]  # node 3 of sub = node 4 of tree


def test_path_to():
    tree = full22()
    assert tree.path_to(0) == [0]
    assert tree.path_to(2) == [0, 2]
    assert tree.path_to(4) == [0, 1, 4]
    assert tree.path_to(6) == [0, 2, 6]


def test_best_first_tree_equals_capping_the_full_tree():
    """The capped tree built depth by depth holds exactly the `cap` best nodes of the full tree."""
    from tree import best_first_tree
    gen = torch.Generator().manual_seed(0)
    for _ in range(300):
        g, k, cap = (int(torch.randint(lo, hi, (), generator=gen)) for lo, hi in ((1, 6), (1, 5), (1, 40)))
        probs = torch.rand(g, k, generator=gen, dtype=torch.float64).sort(dim=1, descending=True).values
        tokens = torch.randint(0, 1000, (g, k), generator=gen)
        full = draft_tree(3, tokens, probs)
        if cap >= len(full):
            continue
        best = full.scores.sort(descending=True, stable=True).indices[:cap]
        expected = subtree(full, best.sort().values)
        got = best_first_tree(3, tokens, probs, cap)
        assert len(got) == cap
        torch.testing.assert_close(got.scores.sort().values, expected.scores.sort().values, atol=1e-12, rtol=0)
        assert sorted(zip(got.depths.tolist(), got.tokens.tolist())) == sorted(
            zip(expected.depths.tolist(), expected.tokens.tolist()))
        for i in range(1, cap):  # breadth first, parents first, ancestor rows consistent
            p = int(got.parents[i])
            assert p < i and got.depths[i] == got.depths[p] + 1
            assert torch.equal(got.ancestors[i], got.ancestors[p] | (torch.arange(cap) == i))
