"""Exercise 7: the decode step after verification: what one call commits, and the next call's state.
See exercises/ex7_decode_step.md."""
from __future__ import annotations

from typing import NamedTuple


class Commit(NamedTuple):
    """What one decode call commits, and where the next call starts."""
    tokens: list[int]   # the new output tokens of this call
    root: int           # the root of the next tree (the bonus token)
    drafter: int        # the node whose streams draft the next tree (the last accepted node)
    cache_len: int      # committed cache entries after compaction
    done: bool          # the output is complete


def draft_depth(gamma: int, generated: int, max_new_tokens: int) -> int:
    """Depth of the next draft tree: gamma, but no deeper than the token budget can use. `generated` new tokens are
    already in the output (the next tree's root is the last of them); a call adds its accepted drafts and one bonus
    token, so at most max_new_tokens - generated - 1 drafts can still be used."""
    raise NotImplementedError("not written yet: see ex7_decode_step.md")


def commit_step(tokens: list[int], path: list[int], main_argmax: list[int], cache_len: int, generated: int,
                max_new_tokens: int, eos_id: int | None) -> Commit:
    """One decode call after verification. tokens: the tree's tokens (node 0 = the root, already in the output);
    path: the accepted path, node indices, root first; main_argmax[i]: the main stream's argmax at node i;
    cache_len: committed cache entries before the call (the tree forward wrote one more entry per node after them);
    generated: new tokens in the output so far (the root included); eos_id: the end token, or None.
    Returns Commit(tokens, root, drafter, cache_len, done): the accepted drafts then the bonus token (the argmax at
    the last accepted node), cut after the first eos_id (kept) and to the budget max_new_tokens - generated; the
    next root (the bonus token); the last accepted node; the committed cache length after compaction (one entry
    per accepted node); and whether the output is complete (budget reached or eos_id committed)."""
    raise NotImplementedError("not written yet: see ex7_decode_step.md")
