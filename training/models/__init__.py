"""Model code: backbone and text-encoder registries, the title vocabulary and the SICoT model.

Public API (re-exported here)::

    create_backbone(name, pretrained=False, weights_path=None, **kw), list_backbones(),
    register_backbone(name)
    tokenize(title), Vocab, train_word2vec(token_lists, vocab, dim, epochs, seed, workers=1)
    create_text_encoder(name, vocab_size, word_dim, out_dim, word_vectors=None, **kw),
    list_text_encoders(), register_text_encoder(name)
    SICoTConfig, SICoTModel(cfg, word_vectors=None)
"""

from training.models.backbones import create_backbone, list_backbones, register_backbone
from training.models.sicot import SICoTConfig, SICoTExport, SICoTModel
from training.models.text import PAD, UNK, Vocab, tokenize, train_word2vec
from training.models.text_encoders import (
    create_text_encoder,
    list_text_encoders,
    register_text_encoder,
)

__all__ = [
    "PAD",
    "UNK",
    "SICoTConfig",
    "SICoTExport",
    "SICoTModel",
    "Vocab",
    "create_backbone",
    "create_text_encoder",
    "list_backbones",
    "list_text_encoders",
    "register_backbone",
    "register_text_encoder",
    "tokenize",
    "train_word2vec",
]
