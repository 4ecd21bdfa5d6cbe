"""The likely cause of each kind of divergence, as `validate.py compare` reports it (VALIDATING.md §5).

Words, as everywhere in the kit: the *output* is every token generated so far; a call *commits* the tokens it adds
to the output (its `committed` field); the *root* is node 0 of a tree (the previous call's bonus token); the
*bonus token* is the main argmax at the last accepted node; *survivors* are the nodes pruning leaves; the nodes a
cap *keeps* are the capped tree.
"""

CAUSE = dict(
    nonfinite="the candidate's {field} holds {what}{where}: a NaN or infinity in the computation (a softmax "
              "over a row with every entry masked, a log of 0, an overflow in float16) or in writing the trace",
    prompt="call 0 is the prompt as a chain, and the candidate's differs: it ran another prompt (or tokenized it "
           "differently); run the reference's prompts file unchanged (its prompt records are in the reference "
           "trace)",
    prompt_field="the candidate's prompt record differs: run the reference's prompts file unchanged",
    prompt_chain="call 0 is the prompt as a chain: parents i-1 (-1 for the first token), depths and positions i",
    cache_len="cache_len is the cache's length before the call: the prompt and the output except its last token "
              "(the root, fed in this call); a call adds exactly its accepted path (root included) to the cache",
    order="the same tokens in another order: a top-k list runs by probability, descending (torch.topk with "
          "sorted=True), and a tree stores the children of a node in that rank order; only entries whose "
          "reference log-probabilities lie within the tolerance count as ties and may swap",
    streams="the streams differ already at the prompt's last position (call 1 drafts from it). Check, in this "
            "order: (1) stream j starts as S_j = M + P_j at the input of block N-N_s (Eq. 3), not one block later, "
            "with P_j = row j-1 of stream_emb (not a shifted row); (2) in every MSA block stream j attends, in one "
            "softmax, to the main keys up to and including its own node's and to streams 1..j of the same node "
            "only (Eq. 2; a stream that sees later streams changes stream 1 too); (3) the streams share the final "
            "LayerNorm and the LM head",
    stream_deeper="stream top-k differ from depth {d} on while shallower depths agree: check that stream j attends "
                  "to streams <= j only (Eq. 2) and that stream j drafts x[t+1+j] (depth j)",
    tree_streams="the stream top-k drafted from a tree node differ, while those drafted from the prompt (call 1) "
                 "agreed: in the tree pass, the streams of a node see the main keys of exactly that node's row of "
                 "the tree mask (the cache, the node's ancestors and the node itself), never the other nodes of "
                 "lower depth; and the next tree is drafted from the streams of the last accepted node",
    depth="the number of drafted depths differs: depth = min(γ, max_new_tokens - len(output) - 1)",
    root="node 0 (the root) must be the bonus token of the previous call: the last token of the output",
    tree="the tree differs although the stream top-k agree: the full tree is 1 + k + ... + k^depth nodes, breadth "
         "first, the depth-j nodes being stream j's top-k (in rank order) under every depth-(j-1) node; a capped "
         "tree keeps the `cap` nodes of highest path probability, the root counting toward the cap, ties broken "
         "by breadth-first index, the kept nodes staying in breadth-first order; depth = min(γ, max_new_tokens - "
         "len(output) - 1)",
    tree_unknown="the tree differs; the candidate did not record draft_topk (record it to tell the two apart), so "
                 "check the streams first (call 1's tree comes from the streams at the prompt's last position, a "
                 "later call's from those of the previous call's last accepted node), then the tree construction "
                 "(breadth first, children in rank order, the root counting toward a cap)",
    parents="the tokens agree but the parent indices differ: node i's parent is the index, in breadth-first "
            "storage, of the node it hangs under (-1 for the root; a parent always comes first); an off-by-one in "
            "the index arithmetic?",
    positions="positions differ: position = cache_len + depth (the root sits at cache_len)",
    early_exit="early-exit probabilities differ: z~ = lm_head(ln_f(h + up(down(h)))) at the input of block N-N_s, "
               "computed with the tree mask; a node's value is its token's probability under its parent's z~ (not "
               "its own). If they agreed in earlier calls, the lower layers see another cache: the pruned nodes' "
               "lower-layer keys/values must be dropped before the MSA layers, and every layer must keep exactly "
               "the accepted path's entries",
    survivors="survivors differ with equal early-exit probabilities: a node is judged at its parent (its token's "
              "probability under its parent's early-exit distribution, not its own) and dropped with its subtree "
              "when that is below the threshold; the root is never pruned",
    pruned="a node is pruned (null) in one run only: a node is dropped with its subtree when its token's "
           "early-exit probability at its parent is below the threshold; the root is never pruned",
    prefill="the main stream differs in the prefill: a plain causal GPT-2 forward over the prompt (Conv1D weights "
            "transposed to (out, in), LayerNorm eps 1e-5, tanh GELU, LM head tied to wte, positions 0..P-1)",
    main_root="the main stream differs already at the root although its token and position agree: the KV cache "
              "holds other entries. Check cache compaction after acceptance: keep exactly the accepted path's "
              "entries, in path order, right after the earlier ones, in every layer (rejected and pruned nodes' "
              "entries must go)",
    main_node="the main stream differs at a non-root node while the root agrees: check the tree attention mask (a "
              "node sees the whole cache, its ancestors and itself, never its siblings or their subtrees: not a "
              "plain causal mask over the tree), and that streams never enter the main stream's keys/values",
    near_tie=" (the reference's top two are within the tolerance here: a near tie; run both in float64)",
    path_longer="the candidate accepts a node whose token is not the main argmax at its parent{own}: walk from the "
                "root and stop at the first child that does not match (one token accepted too many: an off-by-one "
                "in the acceptance loop?)",
    path_shorter="accepted path shorter with equal argmax: verification compares a child with the argmax at its "
                 "parent (a child is accepted iff its token equals the main argmax at its parent node, not at "
                 "the child itself)",
    path_other="accepted path differs with equal argmax: walk from the root and accept a child iff its token equals "
               "the main argmax at its parent; take the longest such path",
    path_unknown="accepted path differs; the candidate did not record main_argmax, so check the main stream "
                 "(record it to find out) and verification",
    bonus="the bonus token is missing: a call commits the accepted drafts plus the main argmax at the last "
          "accepted node (the bonus token, which is the next root)",
    eos_dropped="the EOS token is missing: a call that reaches EOS commits it (EOS is kept) and decoding stops "
                "there",
    eos_passed="the candidate commits tokens after EOS: cut a call's tokens after the first EOS (kept) and stop",
    budget="the candidate commits more tokens than max_new_tokens allows: cut a call's tokens at the budget",
    committed="committed = the tokens of path[1:] + the bonus token (prefill: the bonus token alone), cut after EOS "
              "and at max_new_tokens; each token of the output is committed by exactly one call",
    call_index="call records must be numbered 0, 1, 2, ... per prompt, call 0 being the prefill (the prompt as a "
               "chain), with no call left out",
    calls_fewer="the candidate made fewer calls: it stopped before the reference did ({stop})",
    calls_more="the candidate made more calls: it did not stop where the reference did ({stop})",
    no_calls="the candidate has no call records for this prompt{others}",
    settings="run the candidate with the reference's settings (see the reference's header)",
    weights="different weights: load the reference's model.safetensors unchanged",
)
