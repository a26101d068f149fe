"""A BiLSTM sequence tagger over word embeddings and a character CNN.

The character CNN gives every word, seen in training or not, a vector built
from its spelling (suffixes, capitals, digits, hyphens): with a small
treebank most test-time errors are unknown words, and this is what tags them.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence


class CharCNN(nn.Module):
    """One vector per word: convolution over its characters, max over real characters only."""

    def __init__(self, vocab_size: int, embedding_dim: int, filters: int, kernel_size: int, pad_index: int) -> None:
        super().__init__()
        self.pad_index = pad_index
        self.embedding = nn.Embedding(vocab_size, embedding_dim, padding_idx=pad_index)
        self.conv = nn.Conv1d(embedding_dim, filters, kernel_size, padding=kernel_size // 2)

    def forward(self, chars: torch.Tensor) -> torch.Tensor:
        batch, length, width = chars.shape
        flat = chars.reshape(batch * length, width)
        hidden = torch.relu(self.conv(self.embedding(flat).transpose(1, 2)))  # (B*T, filters, width)
        # Padding characters must not win the max, or a word's vector would
        # depend on the longest word of its batch.
        real = (flat != self.pad_index).unsqueeze(1)
        pooled = hidden.masked_fill(~real, 0.0).amax(dim=2)  # relu output >= 0, so 0 never beats a real max
        return pooled.reshape(batch, length, -1)


class BiLSTMTagger(nn.Module):
    """{"words": (B,T), "chars": (B,T,L)} -> tag logits (B,T,num_tags).

    Sequences are packed by length, so the backward LSTM starts at each
    sentence's last word, not at its padding: a sentence gets the same
    logits whatever it is batched with.
    """

    def __init__(self, vocab_size: int, char_vocab_size: int, num_tags: int, pad_index: int = 0,
                 embedding_dim: int = 100, char_embedding_dim: int = 32, char_filters: int = 64,
                 char_kernel_size: int = 3, hidden_size: int = 128, num_layers: int = 1,
                 dropout: float = 0.3) -> None:
        super().__init__()
        self.pad_index = pad_index
        self.embedding = nn.Embedding(vocab_size, embedding_dim, padding_idx=pad_index)
        self.chars = CharCNN(char_vocab_size, char_embedding_dim, char_filters, char_kernel_size,
                             pad_index) if char_filters > 0 else None
        self.dropout = nn.Dropout(dropout)
        self.lstm = nn.LSTM(embedding_dim + max(char_filters, 0), hidden_size, num_layers=num_layers,
                            batch_first=True, bidirectional=True, dropout=dropout if num_layers > 1 else 0.0)
        self.output = nn.Linear(2 * hidden_size, num_tags)

    def forward(self, x: dict[str, torch.Tensor]) -> torch.Tensor:
        words = x["words"]
        features = [self.embedding(words)]
        if self.chars is not None:
            features.append(self.chars(x["chars"]))
        embedded = self.dropout(torch.cat(features, dim=-1))
        lengths = (words != self.pad_index).sum(dim=1).clamp(min=1).cpu()
        packed = pack_padded_sequence(embedded, lengths, batch_first=True, enforce_sorted=False)
        hidden, _ = pad_packed_sequence(self.lstm(packed)[0], batch_first=True, total_length=words.size(1))
        return self.output(self.dropout(hidden))
