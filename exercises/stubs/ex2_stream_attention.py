"""Exercise 2: stream initialisation (Eq. 3) and the attention of one node's streams (Eq. 2).
See exercises/ex2_stream_attention.md."""
import math

import torch
from torch.nn import functional as F


def init_streams(main: torch.Tensor, stream_emb: torch.Tensor) -> torch.Tensor:
    """Eq. 3: the γ streams of one position at the input of the first MSA block.
    main: (C,) the main stream's hidden state M_t; stream_emb: (γ, C) the learned vectors P_1..P_γ.
    Returns (γ, C): row j-1 is S_{t,j} = M_t + P_j."""
    raise NotImplementedError("not written yet: see ex2_stream_attention.md")


def stream_attention(q: torch.Tensor, k_main: torch.Tensor, v_main: torch.Tensor, k_streams: torch.Tensor,
                     v_streams: torch.Tensor) -> torch.Tensor:
    """Eq. 2 for the γ streams of ONE node and one attention head, during decoding.
    q, k_streams, v_streams: (γ, hs), the queries, keys and values of the node's streams (row j-1 = stream j);
    k_main, v_main: (L, hs), the main-stream keys and values the node may see (the KV cache, the node included).
    Stream j attends, in ONE softmax of scaled dot products (scale 1/sqrt(hs)), to all L main keys and to
    streams 1..j of the node. Returns (γ, hs), the attention output of each stream."""
    raise NotImplementedError("not written yet: see ex2_stream_attention.md")
