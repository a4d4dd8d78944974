"""Text encoders of the semantic stream (registry: ``create_text_encoder(name, ...)``).

Each encoder embeds word ids (embeddings initialised from word2vec, then fine-tuned) and
returns ``(s, attn)``: ``s`` (N, out_dim) the title embedding, projected by Linear + BatchNorm1d
so that it lives on the same scale as the visual feature it is max-pooled with; ``attn``
(N, L) the word weights (zero on padding, summing to 1 over the real words of a title) or None
for encoders without attention. A title with no word gets ``attn`` all zero.

``bilinear_attention`` (SICoT §3.2). With E = (e_1..e_L) ∈ R^{L×k} the word embeddings of a
title and M_i its mask::

    c   = Σ_i M_i e_i / max(1, Σ_i M_i)                 global context, order-free (avg pooling)
    F_i = (U c + b_u) ⊙ (V e_i + b_v) ∈ R^r             second-order (bilinear) feature map,
                                                        low-rank: F_ij = (u_j·c)(v_j·e_i) + ...
    p_i = mean_j F_ij                                   average pooling over the r channels
    a   = softmax over {i : M_i} of p                   the non-linearity → attention vector
    s   = BN(W_o Σ_i a_i e_i + b_o)                     weighted sum of words, projected to d

``mean_j F_ij`` = cᵀ(UᵀV/r)e_i + terms in e_i alone + terms in c alone: a full bilinear form
of rank ≤ r between context and word, plus (through b_u) a context-free score per word that
can learn "free shipping"-like words are noise; terms in c alone cancel in the softmax.
Softmax rather than sigmoid-then-renormalise because: (1) s stays a convex combination of
word embeddings at the scale of mean pooling whatever the title length; (2) equal scores give
exactly mean pooling (the ``mean`` ablation), which is where training starts since the
initial scores are small; (3) sigmoids saturate at 1 and then stop learning, collapsing back
to mean pooling, whereas softmax keeps a gradient on the relative scores.

``mean``: s = BN(W_o c) (AliNLP mean pooling in Table 3). ``bilstm``: final forward/backward
hidden states of a bi-LSTM. ``bilstm_attention``: bi-LSTM outputs h_i, a = softmax_i(wᵀ
tanh(W h_i + b)) (Yang et al. 2016), s = BN(W_o Σ a_i h_i).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from training.models.registry import Registry
from training.models.text import PAD

TextEncoderFactory = Callable[..., "TextEncoder"]
_REGISTRY: Registry[TextEncoderFactory] = Registry("text encoder")


register_text_encoder = _REGISTRY.register


list_text_encoders = _REGISTRY.names


def create_text_encoder(
    name: str, vocab_size: int, word_dim: int, out_dim: int,
    word_vectors: np.ndarray | torch.Tensor | None = None, **kwargs: Any,
) -> TextEncoder:
    return _REGISTRY.get(name)(vocab_size, word_dim, out_dim, word_vectors, **kwargs)


def masked_softmax(scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Softmax over the True positions of each row; rows without any give all zeros."""
    filled = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
    return torch.softmax(filled, dim=-1) * mask


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(N, L, k) → (N, k), averaging the True positions (zeros for an empty row)."""
    m = mask.unsqueeze(-1).to(x.dtype)
    return (x * m).sum(1) / m.sum(1).clamp_min(1.0)


class TextEncoder(nn.Module):
    """Word embedding (PAD row fixed at zero) + the final projection shared by all encoders."""

    has_attention = False

    def __init__(
        self, vocab_size: int, word_dim: int, out_dim: int, proj_in: int,
        word_vectors: np.ndarray | torch.Tensor | None = None, dropout: float = 0.0,
    ):
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, word_dim, padding_idx=PAD)
        if word_vectors is not None:
            wv = torch.as_tensor(np.asarray(word_vectors), dtype=torch.float32)
            if tuple(wv.shape) != (vocab_size, word_dim):
                raise ValueError(
                    f"word_vectors has shape {tuple(wv.shape)}, expected ({vocab_size}, {word_dim})"
                )
            with torch.no_grad():
                self.embedding.weight.copy_(wv)
        else:
            nn.init.normal_(self.embedding.weight, 0.0, 0.1)
        with torch.no_grad():
            self.embedding.weight[PAD].zero_()
        self.dropout = nn.Dropout(dropout)
        self.proj = nn.Sequential(nn.Linear(proj_in, out_dim), nn.BatchNorm1d(out_dim))
        self.out_dim = out_dim

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.embedding(ids))

    def forward(
        self, ids: torch.Tensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        raise NotImplementedError


class MeanPooling(TextEncoder):
    def __init__(self, vocab_size: int, word_dim: int, out_dim: int, word_vectors=None, **kw):  # type: ignore[no-untyped-def]
        super().__init__(vocab_size, word_dim, out_dim, word_dim, word_vectors, **kw)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, None]:
        return self.proj(masked_mean(self.embed(ids), mask)), None


class BilinearAttention(TextEncoder):
    """The paper's bilinear word attention; formulas in the module docstring."""

    has_attention = True

    def __init__(  # type: ignore[no-untyped-def]
        self, vocab_size: int, word_dim: int, out_dim: int, word_vectors=None, rank: int = 128,
        **kw,
    ):
        super().__init__(vocab_size, word_dim, out_dim, word_dim, word_vectors, **kw)
        self.context_proj = nn.Linear(word_dim, rank)  # U, b_u
        self.word_proj = nn.Linear(word_dim, rank)  # V, b_v

    def attention(self, e: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        c = masked_mean(e, mask)  # (N, k)
        fmap = self.context_proj(c).unsqueeze(1) * self.word_proj(e)  # (N, L, r)
        return masked_softmax(fmap.mean(-1), mask)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        e = self.embed(ids)
        a = self.attention(e, mask)
        return self.proj(torch.einsum("nl,nlk->nk", a, e)), a


class _BiLSTMBase(TextEncoder):
    def __init__(  # type: ignore[no-untyped-def]
        self, vocab_size: int, word_dim: int, out_dim: int, word_vectors=None,
        hidden: int | None = None, **kw,
    ):
        hidden = hidden or word_dim
        super().__init__(vocab_size, word_dim, out_dim, 2 * hidden, word_vectors, **kw)
        self.lstm = nn.LSTM(word_dim, hidden, batch_first=True, bidirectional=True)

    def run_lstm(
        self, ids: torch.Tensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """→ outputs (N, L, 2h) (zero on padding) and final states (N, 2h). Assumes the
        right-padding :meth:`Vocab.encode` produces; empty titles run over one PAD step."""
        lengths = mask.sum(1).clamp_min(1).cpu()
        packed = pack_padded_sequence(self.embed(ids), lengths, batch_first=True,
                                      enforce_sorted=False)
        out, (h, _) = self.lstm(packed)
        out, _ = pad_packed_sequence(out, batch_first=True, total_length=ids.shape[1])
        return out, torch.cat([h[0], h[1]], dim=-1)


class BiLSTM(_BiLSTMBase):
    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, None]:
        return self.proj(self.run_lstm(ids, mask)[1]), None


class BiLSTMAttention(_BiLSTMBase):
    has_attention = True

    def __init__(self, *args, attn_dim: int = 128, **kw):  # type: ignore[no-untyped-def]
        super().__init__(*args, **kw)
        self.score = nn.Sequential(
            nn.Linear(2 * self.lstm.hidden_size, attn_dim), nn.Tanh(), nn.Linear(attn_dim, 1)
        )

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out, _ = self.run_lstm(ids, mask)
        a = masked_softmax(self.score(out).squeeze(-1), mask)
        return self.proj(torch.einsum("nl,nlk->nk", a, out)), a


register_text_encoder("mean")(MeanPooling)
register_text_encoder("bilinear_attention")(BilinearAttention)
register_text_encoder("bilstm")(BiLSTM)
register_text_encoder("bilstm_attention")(BiLSTMAttention)
