"""Tiny random models of each supported architecture, saved as real model folders.

Built from a config (no hub access), with a WordLevel tokenizer trained on a few
sentences; each folder is what `save_pretrained` writes, so the exporter loads it the way
it loads a user's model.
"""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from transformers import (BertConfig, BertForSequenceClassification, GPT2Config, GPT2LMHeadModel,
                          LlamaConfig, LlamaForCausalLM, OPTConfig, OPTForSequenceClassification,
                          PreTrainedTokenizerFast)

VOCAB = 1000
SENTENCES = ["a great movie", "a terrible movie", "it was great fun", "it was terrible",
             "the plot is thin but the actors are good", "what a waste of time"]
TINY = {  # name -> (model class, config); hidden 32-64, 2 layers
    "llama": (LlamaForCausalLM, LlamaConfig(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)),
    "gpt2": (GPT2LMHeadModel, GPT2Config(
        vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=128)),
    "opt": (OPTForSequenceClassification, OPTConfig(
        vocab_size=VOCAB, hidden_size=32, ffn_dim=64, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=128, word_embed_proj_dim=32,
        num_labels=2, pad_token_id=0)),
    "bert": (BertForSequenceClassification, BertConfig(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=128, num_labels=2)),
}


def tokenizer() -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(SENTENCES, trainers.WordLevelTrainer(
        special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]"]))
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]",
                                   cls_token="[CLS]", sep_token="[SEP]")


def build(name: str, folder: Path) -> Path:
    """Save tiny model `name` (seeded) and the tokenizer into `folder`."""
    cls, config = TINY[name]
    torch.manual_seed(0)
    model = cls(config).eval()
    model.save_pretrained(folder)
    tokenizer().save_pretrained(folder)
    return folder
