r"""The paper's Quick-Thought GRU encoder and the original Quick-Thought objective.

Quick-Thought (Logeswaran & Lee, *An efficient framework for learning sentence
representations*, ICLR 2018) trains two sentence encoders: ``f`` for a sentence and ``g``
for its context. Wang & Isola's BookCorpus experiment (their Table 4) starts from it.

Encoder (:class:`QuickThoughtGRU`, built by :func:`build_gru_encoder`):
    WordPiece ids → word embeddings → a bidirectional GRU, twice: ``f`` and ``g`` have
    separate embeddings and GRUs. Each encoder's sentence vector is the concatenation of
    the forward and backward final states (``hidden_dim`` wide, the paper's 1200). At
    evaluation the sentence vector is ``concat(f(s), g(s))`` (``2 * hidden_dim`` wide), as
    Quick-Thought does, then L2-normalised by sentence-transformers' ``Normalize``. The
    model is a ``SentenceTransformer``: ``encoder.save(folder)`` writes a plain
    sentence-transformers folder (``modules.json`` names ``hsrl.models.quickthought.QuickThoughtGRU``,
    an importable class, never ``__main__``). sentence-transformers 6 opens it with
    ``SentenceTransformer(folder, trust_remote_code=True)``; :func:`load_encoder` opens it
    without that flag.

Training views (for :func:`hsrl.training.fit`):
    Rows carry a *role* (:data:`ROLE_KEY`: 0 → ``f``, 1 → ``g``); the model then returns
    each row encoded by its own encoder only, L2-normalised. The collates below build the
    rows, the ``encode`` functions split them into ``(x, y)``:

    * neighbour pairs (align/uniform, contrastive): :func:`gru_pair_collate` +
      :func:`gru_pair_encoder` give ``x = f(anchors)``, ``y = g(neighbours)``;
    * the ``quickthought`` objective: :class:`ConsecutiveSentenceDataset` (unshuffled) +
      :func:`consecutive_collate` + :func:`consecutive_encoder` give ``x = f(s_1..s_B)`` and
      ``y = g(s_1..s_B)`` for one run of consecutive sentences.

Objective: :func:`hsrl.losses.quickthought_loss`, the loss term ``quickthought`` of the objective table
(``HypersphereLoss("quickthought:1,context=1")``).

Example:
    >>> from hsrl.losses import HypersphereLoss
    >>> import torch, torch.nn.functional as F
    >>> u, v = F.normalize(torch.randn(8, 4), dim=1), F.normalize(torch.randn(8, 4), dim=1)
    >>> value = HypersphereLoss("quickthought:1,context=1")(u, v)
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, ClassVar

import torch
from safetensors.torch import save_file as save_safetensors_file
from sentence_transformers.base.modules.input_module import InputModule
from torch import Tensor, nn
from torch.utils.data import Dataset

__all__ = [
    "ROLE_KEY",
    "ConsecutiveSentenceDataset",
    "QuickThoughtGRU",
    "build_gru_encoder",
    "consecutive_collate",
    "consecutive_encoder",
    "gru_pair_collate",
    "gru_pair_encoder",
    "load_encoder",
]

#: Feature key of a ``(rows,)`` integer tensor: 0 encodes the row with ``f``, 1 with ``g``.
#: Without it (``encode``, evaluation) every row is ``concat(f(s), g(s))``.
ROLE_KEY = "quickthought_role"


# --------------------------------------------------------------------------- the encoder


class _GRUEncoder(nn.Module):
    """Word embeddings and a one-layer GRU; the sentence vector is the final hidden state(s)."""

    def __init__(self, vocab_size: int, embedding_dim: int, hidden_dim: int, bidirectional: bool, pad_id: int) -> None:
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, embedding_dim, padding_idx=pad_id)
        per_direction = hidden_dim // 2 if bidirectional else hidden_dim
        self.gru = nn.GRU(embedding_dim, per_direction, batch_first=True, bidirectional=bidirectional)

    def forward(self, input_ids: Tensor, lengths: Tensor) -> Tensor:
        # Packing makes each row's final state the one after its last real token, not
        # after the padding (and the backward direction start at that token).
        packed = nn.utils.rnn.pack_padded_sequence(
            self.embedding(input_ids), lengths.cpu(), batch_first=True, enforce_sorted=False
        )
        _, h_n = self.gru(packed)  # (directions, rows, per_direction), rows in input order
        return torch.cat(list(h_n), dim=1)


class QuickThoughtGRU(InputModule):
    """Quick-Thought's two GRU sentence encoders ``f`` and ``g`` as a sentence-transformers input module.

    ``forward`` reads ``input_ids`` and ``attention_mask`` (from :meth:`preprocess`) and writes
    ``sentence_embedding``: ``concat(f(s), g(s))`` (width ``2 * hidden_dim``), or, when the
    features hold :data:`ROLE_KEY`, ``f(s)`` or ``g(s)`` per row (width ``hidden_dim``). It is
    not normalised here; :func:`build_gru_encoder` appends ``Normalize``.

    Args:
        tokenizer: a fast 🤗 tokenizer (e.g. from :func:`hsrl.models.text.train_wordpiece_tokenizer`);
            saved beside the weights.
        embedding_dim: word-embedding width of each encoder.
        hidden_dim: width of each encoder's sentence vector (paper: 1200). Bidirectional: the
            forward and backward final states, ``hidden_dim / 2`` each.
        bidirectional: a bidirectional GRU (issue 3) or Quick-Thought's uni-directional one.
        max_seq_length: inputs are truncated to this many tokens ([CLS] and [SEP] included).
    """

    config_keys: ClassVar[list[str]] = ["embedding_dim", "hidden_dim", "bidirectional", "max_seq_length"]
    config_file_name: ClassVar[str] = "quickthought_config.json"

    def __init__(
        self,
        tokenizer: Any,
        embedding_dim: int = 300,
        hidden_dim: int = 1200,
        bidirectional: bool = True,
        max_seq_length: int = 64,
    ) -> None:
        super().__init__()
        if bidirectional and hidden_dim % 2:
            raise ValueError(f"a bidirectional GRU splits hidden_dim over its two directions: got odd {hidden_dim}")
        if min(embedding_dim, hidden_dim, max_seq_length) < 1:
            raise ValueError("embedding_dim, hidden_dim and max_seq_length must be >= 1")
        if getattr(tokenizer, "pad_token_id", None) is None:
            raise ValueError("the tokenizer needs a padding token")
        self.tokenizer = tokenizer
        self.embedding_dim, self.hidden_dim = int(embedding_dim), int(hidden_dim)
        self.bidirectional, self.max_seq_length = bool(bidirectional), int(max_seq_length)
        vocab, pad = len(tokenizer), int(tokenizer.pad_token_id)
        self.f = _GRUEncoder(vocab, self.embedding_dim, self.hidden_dim, self.bidirectional, pad)
        self.g = _GRUEncoder(vocab, self.embedding_dim, self.hidden_dim, self.bidirectional, pad)

    def preprocess(self, inputs: Sequence[str], prompt: str | None = None, **kwargs: Any) -> dict[str, Tensor]:
        """Token ids and attention mask of ``inputs``, padded to the longest, truncated to ``max_seq_length``."""
        if any(not isinstance(text, str) for text in inputs):
            raise ValueError("QuickThoughtGRU encodes single texts (strings), not pairs or other modalities")
        texts = self._prepend_prompt(list(inputs), prompt) if prompt else list(inputs)
        # [CLS]/[SEP] stay: they mark both ends for the GRU and keep every sequence non-empty.
        encoded = self.tokenizer(
            texts, padding=True, truncation=True, max_length=self.max_seq_length, return_tensors="pt"
        )
        return {"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"]}

    def forward(self, features: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        ids, mask = features["input_ids"], features["attention_mask"]
        lengths = mask.sum(dim=1).clamp(min=1)
        role = features.get(ROLE_KEY)
        if role is None:
            features["sentence_embedding"] = torch.cat([self.f(ids, lengths), self.g(ids, lengths)], dim=1)
            return features
        on_f, on_g = (role == 0).nonzero().squeeze(1), (role == 1).nonzero().squeeze(1)
        if on_f.numel() + on_g.numel() != role.numel():
            raise ValueError(f"{ROLE_KEY} must hold only 0 (f) and 1 (g)")
        parts = [(rows, enc(ids[rows], lengths[rows])) for rows, enc in ((on_f, self.f), (on_g, self.g)) if len(rows)]
        out = parts[0][1].new_zeros(len(role), self.hidden_dim)
        for rows, z in parts:
            out = out.index_copy(0, rows, z.to(out.dtype))  # out of place: autograd reaches both encoders
        features["sentence_embedding"] = out
        return features

    def get_embedding_dimension(self) -> int:
        """Width of the evaluation vector ``concat(f(s), g(s))``."""
        return 2 * self.hidden_dim

    def save(self, output_path: str, *args: Any, safe_serialization: bool = True, **kwargs: Any) -> None:
        self.save_config(output_path)
        # Contiguous CPU copies: safetensors refuses GPU GRU weights that share flattened storage.
        state = {name: value.detach().cpu().contiguous() for name, value in self.state_dict().items()}
        if safe_serialization:
            save_safetensors_file(state, os.path.join(output_path, "model.safetensors"))
        else:
            torch.save(state, os.path.join(output_path, "pytorch_model.bin"))
        self.save_tokenizer(output_path)

    @classmethod
    def load(
        cls,
        model_name_or_path: str,
        subfolder: str = "",
        token: bool | str | None = None,
        cache_folder: str | None = None,
        revision: str | None = None,
        local_files_only: bool = False,
        **kwargs: Any,
    ) -> QuickThoughtGRU:
        from transformers import PreTrainedTokenizerFast

        hub = {"subfolder": subfolder, "token": token, "cache_folder": cache_folder, "revision": revision,
               "local_files_only": local_files_only}  # fmt: skip
        config = cls.load_config(model_name_or_path, **hub)
        config = {key: value for key, value in config.items() if key in cls.config_keys}
        folder = cls.load_dir_path(model_name_or_path, **hub)
        module = cls(PreTrainedTokenizerFast.from_pretrained(folder), **config)
        cls.load_torch_weights(model_name_or_path, model=module, **hub)
        return module


def build_gru_encoder(
    sentences: Sequence[str],
    *,
    vocab_size: int = 8000,
    embedding_dim: int = 300,
    hidden_dim: int = 1200,
    max_seq_length: int = 64,
    bidirectional: bool = True,
    workdir: str | os.PathLike[str],
    device: str | None = "cpu",
) -> Any:
    """A from-scratch Quick-Thought GRU ``SentenceTransformer`` (``QuickThoughtGRU`` → ``Normalize``).

    Trains a WordPiece tokenizer on ``sentences`` (offline, saved in ``workdir/tokenizer``);
    weights are drawn from the current torch seed. ``encode`` gives unit-norm vectors of
    width ``2 * hidden_dim``.
    """
    from sentence_transformers import SentenceTransformer
    from sentence_transformers import models as st_modules  # 5.x and 6.x both have it (base.modules: 6.x only)
    from transformers import PreTrainedTokenizerFast

    from hsrl.models.wordpiece import train_wordpiece_tokenizer

    if not sentences:
        raise ValueError("a from-scratch GRU encoder needs training sentences for its tokenizer")
    folder = Path(workdir) / "tokenizer"
    folder.mkdir(parents=True, exist_ok=True)
    train_wordpiece_tokenizer(sentences, vocab_size, folder)
    tokenizer = PreTrainedTokenizerFast.from_pretrained(str(folder))
    gru = QuickThoughtGRU(tokenizer, embedding_dim, hidden_dim, bidirectional, max_seq_length)
    return SentenceTransformer(modules=[gru, st_modules.Normalize()], device=device)


def load_encoder(path: str | os.PathLike[str], *, device: str | None = "cpu", **kwargs: Any) -> Any:
    """Open a sentence-transformers folder that may hold a :class:`QuickThoughtGRU`, without ``trust_remote_code``.

    Since sentence-transformers 6.0, ``SentenceTransformer(path)`` refuses a ``modules.json``
    type outside ``sentence_transformers.*`` unless ``trust_remote_code=True``, and that flag
    also lets a folder run Python files it ships. Here hsrl's own, already imported class is
    handed to the loader instead, so nothing from the folder is imported. Folders of standard
    modules (the transformer encoders) load as with ``SentenceTransformer(path)``.
    """
    from sentence_transformers import SentenceTransformer

    classes = {f"{QuickThoughtGRU.__module__}.{QuickThoughtGRU.__name__}": QuickThoughtGRU}
    loader = getattr(SentenceTransformer, "_load_with_module_classes", None)
    if loader is None:  # releases without it: the class resolves by import (the flag only gates it in 6.x)
        return SentenceTransformer(str(path), device=device, trust_remote_code=True, **kwargs)
    return loader(str(path), classes, device=device, **kwargs)


def _input_module(encoder: Any) -> Any:
    return encoder[0] if isinstance(encoder, nn.Sequential) and len(encoder) else encoder


def _has_two_encoders(encoder: Any) -> bool:
    return isinstance(_input_module(encoder), QuickThoughtGRU)


def _with_roles(features: dict[str, Tensor], n_f: int, n_g: int) -> dict[str, Tensor]:
    features[ROLE_KEY] = torch.cat([torch.zeros(n_f, dtype=torch.long), torch.ones(n_g, dtype=torch.long)])
    return features


# --------------------------------------------------------------------------- training views


def gru_pair_collate(encoder: Any, *, both_directions: bool = True) -> Callable[[list[tuple[str, str]]], Any]:
    """Collate ``[(anchor, neighbour), ...]`` into ``(features, n)``: anchors for ``f``, neighbours for ``g``.

    One padding and one forward cover both (``features`` holds the ``2n`` rows with their
    :data:`ROLE_KEY`). The pair datasets list each neighbour pair once, earlier sentence
    first; Quick-Thought scores ``f(s)`` against the contexts on both sides, so with
    ``both_directions`` every other pair of a batch is swapped (by position, which keeps
    the batches reproducible) and ``f`` sees both earlier and later sentences.
    """

    def collate(items: list[tuple[str, str]]) -> tuple[dict[str, Tensor], int]:
        pairs = [(b, a) if both_directions and k % 2 else (a, b) for k, (a, b) in enumerate(items)]
        texts = [a for a, _ in pairs] + [b for _, b in pairs]
        return _with_roles(encoder.preprocess(texts), len(pairs), len(pairs)), len(pairs)

    return collate


def gru_pair_encoder(encoder: Any | None = None) -> Callable[[nn.Module, Any], tuple[Tensor, Tensor]]:
    """``encode(model, (features, n))`` for :func:`hsrl.training.fit`: ``(f(anchors), g(neighbours))``, unit norm.

    The batch comes from :func:`gru_pair_collate`; both encoders run in every step, so all
    parameters get gradients (distributed data parallel needs that).
    """

    def encode(model: nn.Module, batch: tuple[dict[str, Tensor], int]) -> tuple[Tensor, Tensor]:
        features, n = batch
        z = model(features)["sentence_embedding"]
        return z[:n], z[n:]

    return encode


class ConsecutiveSentenceDataset(Dataset[str]):
    """Sentences in reading order, for batches of consecutive sentences (the ``quickthought`` objective).

    Load it *unshuffled* (``make_dataloader(..., shuffle=False)``): batch ``k`` is then
    sentences ``kB .. kB+B-1``. Under several processes Accelerate gives process ``p`` the
    batches ``p, p+W, ...``, so the gathered global batch is again one run of ``W·B``
    consecutive sentences, which is what the objective assumes.

    Documents are concatenated in order, so a batch spans about ``B / L`` document breaks
    (``L``: mean sentences per document); each adds ``2 · context`` wrong soft targets out of
    about ``2 · context · B``, as in Quick-Thought's own training on the concatenated
    BookCorpus.

    Args:
        sentences: all sentences, document after document (e.g. ``SentenceCorpus.sentences``).
    """

    def __init__(self, sentences: Sequence[str]) -> None:
        if len(sentences) < 2:
            raise ValueError(f"consecutive batches need at least two sentences, got {len(sentences)}")
        self.sentences = sentences

    def __len__(self) -> int:
        return len(self.sentences)

    def __getitem__(self, index: int) -> str:
        return self.sentences[index]


def consecutive_collate(encoder: Any) -> Callable[[list[Any]], tuple[dict[str, Tensor], int]]:
    """Collate a run of consecutive sentences into ``(features, n)`` for :func:`consecutive_encoder`.

    Items are strings, or ``(sentence, next_sentence)`` pairs of a stream in corpus order
    (e.g. :class:`hsrl.data.text_sources.BookCorpusPairs`), of which the first is used. For
    a :class:`QuickThoughtGRU` the ``n`` sentences appear twice (``2n`` rows: once for ``f``,
    once for ``g``); for any other encoder once.
    """
    two = _has_two_encoders(encoder)

    def collate(items: list[Any]) -> tuple[dict[str, Tensor], int]:
        sentences = [item if isinstance(item, str) else item[0] for item in items]
        features = encoder.preprocess(sentences)
        if two:  # the same tokens for f and g: repeat them instead of tokenising twice
            features = _with_roles({k: torch.cat([v, v]) for k, v in features.items()}, len(items), len(items))
        return features, len(items)

    return collate


def consecutive_encoder(encoder: Any | None = None) -> Callable[[nn.Module, Any], tuple[Tensor, Tensor]]:
    """``encode(model, (features, n))`` for :func:`hsrl.training.fit`: ``(f(s_1..s_n), g(s_1..s_n))``, unit norm.

    With a single encoder (a transformer) ``f = g``: both views are the same embeddings.
    """

    def encode(model: nn.Module, batch: tuple[dict[str, Tensor], int]) -> tuple[Tensor, Tensor]:
        features, n = batch
        z = model(features)["sentence_embedding"]
        return (z[:n], z[n:]) if z.shape[0] == 2 * n else (z, z)

    return encode
