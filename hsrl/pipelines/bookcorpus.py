"""The text pipeline: Quick-Thought-style pretraining with the paper's objectives (its Table 4, BookCorpus).

``recipes/bookcorpus.py`` is its command line (``accelerate launch recipes/bookcorpus.py --dataset austen``);
``hsrl reproduce table`` and the tests call :func:`run` with a :class:`BookCorpusConfig` directly.

A sentence and its neighbouring sentences (within ``--context-size``, never across a
document) are positive pairs. ``--encoder gru`` is the paper's Quick-Thought encoder: sentences
are encoded by f and their neighbours by g, and at evaluation a sentence is concat(f, g). The
``quickthought`` objective trains on unshuffled batches of consecutive sentences instead of
pairs (each sentence must pick out its neighbours in the batch).

:func:`run` reads top to bottom: data, encoder, baseline evaluation of the starting model,
``hsrl.training.fit``, evaluation, and the model written as a sentence-transformers folder with
``OUTPUT/metrics.json``. Every hsrl command opens that folder (:func:`hsrl.models.folder.open_model`);
``SentenceTransformer(OUTPUT/model)`` does too (a GRU model needs ``trust_remote_code=True``).
"""

from __future__ import annotations

import itertools
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from hsrl.checkpoints import atomic_write_json
from hsrl.configuration import config_to_dict
from hsrl.data.hard_negatives import HardNegativePairs, mine_hard_negatives
from hsrl.data.text import SentenceCorpus, SentencePairDataset, austen_splits
from hsrl.data.text_sources import BookCorpusPairs, load_documents
from hsrl.evaluation.summary import format_summary, write_metrics
from hsrl.evaluation.text import (
    eval_set_name,
    evaluate_text_encoder,
    format_comparison,
    load_eval_documents,
    summary_block,
)
from hsrl.hub import publish_run, push_to_hub_field
from hsrl.losses import HypersphereLoss
from hsrl.models.folder import save_model
from hsrl.models.text import (
    LENGTH_BUCKET_SIZE,
    ScratchConfig,
    build_text_encoder,
    encode_texts,
    freeze_lower_layers,
    pair_collate,
    pair_encoder,
    save_text_encoder,
    set_dropout,
)
from hsrl.models.wise import interpolate_weights, snapshot_weights
from hsrl.replay import ReplayAnchor, load_replay_documents
from hsrl.training import TrainConfig, TrainingDivergedError, fit, make_dataloader, training_session

#: Streamed sentences a from-scratch tokenizer is trained on when the data is BookCorpus.
TOKENIZER_SAMPLE = 200_000


@dataclass
class BookCorpusConfig(TrainConfig):
    """Quick-Thought-style pretraining of a text encoder with align/uniform or contrastive losses."""

    dataset: str = field(default="bookcorpus", metadata={"help": "bookcorpus (streamed), austen (embedded) or a path"})
    encoder: Literal["transformer", "gru"] = field(
        default="transformer", metadata={"help": "transformer, or gru: the paper's Quick-Thought encoder (f and g)"}
    )
    model: str | None = field(
        default=None, metadata={"help": "starting checkpoint: minilm (packaged), a folder, or none = from scratch"}
    )
    gru_dim: int = field(
        default=1200, metadata={"help": "gru: width of each of f and g (paper: 1200); evaluation uses both"}
    )
    gru_embedding_dim: int = field(default=300, metadata={"help": "gru: word-embedding width"})
    loss: str = field(
        default="align:0.9,alpha=2 + uniform:0.1,t=5",
        metadata={"help": "objective as the paper writes it (default: its BookCorpus setting, Table 4)"},
    )
    context_size: int = field(default=1, metadata={"help": "neighbours within this many sentences are positives"})
    pairs: Literal["shuffled", "same-book", "consecutive"] = field(
        default="shuffled",
        metadata={"help": "shuffled pairs; same-book: every batch from one book (harder negatives); or batches "
                          "of consecutive sentences (the paper's)"},
    )  # fmt: skip
    pooling: Literal["mean", "cls"] = field(default="mean", metadata={"help": "token pooling (new encoders)"})
    projection_dim: int | None = field(default=None, metadata={"help": "add a linear projection head"})
    max_seq_length: int = field(default=64, metadata={"help": "truncate sentences to this many tokens"})
    scratch_layers: int = field(default=4, metadata={"help": "from scratch: transformer layers"})
    scratch_hidden: int = field(default=256, metadata={"help": "from scratch: hidden size"})
    vocab_size: int = field(default=8000, metadata={"help": "from scratch: WordPiece vocabulary size"})
    eval_max_sentences: int | None = field(
        default=None, metadata={"help": "evaluate on the first N held-out sentences"}
    )
    eval_dataset: str = field(
        default="factbook",
        metadata={"help": "other evaluation sets, comma-separated: factbook (embedded, another domain), a path, "
                          "or none"},
    )  # fmt: skip
    dropout: float | None = field(
        default=None, metadata={"help": "set every dropout probability of the encoder (default: the model's own)"}
    )
    optimizer: Literal["sgd", "adam", "adamw"] = field(default="adam", metadata={"help": "optimizer (paper: Adam)"})
    lr: float = field(default=5e-4, metadata={"help": "learning rate (paper: 5e-4)"})
    batch_size: int = field(default=400, metadata={"help": "pairs per process and step (paper: 400)"})
    max_grad_norm: float | None = field(default=1.0, metadata={"help": "clip gradients to this norm"})
    freeze_layers: int = field(
        default=0, metadata={"help": "freeze the token embeddings and the first N transformer layers (0: train all)"}
    )
    length_bucket_size: int = field(
        default=LENGTH_BUCKET_SIZE,
        metadata={"help": "embed a batch's sentences in length-sorted groups of this many, each padded to its own "
                          "longest (1.7x faster steps on Austen); 0: one forward padded to the batch's longest"},
    )  # fmt: skip
    hard_negatives: int = field(
        default=0,
        metadata={"help": "mine this many hard-negative candidates per pair with the starting model (the sentences "
                          "of the same book most like its anchor); each step adds one drawn per pair to the "
                          "contrastive term's negatives (0: in-batch negatives only)"},
    )  # fmt: skip
    replay_dataset: str = field(
        default="none",
        metadata={"help": "text of another domain to keep where the starting model put it (hsrl.replay): wordnet "
                          "(WordNet's definitions, embedded), pydoc (the Python reference), a path, or none"},
    )  # fmt: skip
    replay_sentences: int = field(default=32, metadata={"help": "replay sentences per process and step"})
    replay_weight: float = field(default=4.0, metadata={"help": "weight of the replay term (mu)"})
    wise_ft: float = field(
        default=1.0,
        metadata={"help": "after training, mix the weights with the starting model's: (1 - a)·start + a·trained "
                          "(WiSE-FT; keeps more of the start on other domains); 1 keeps the trained weights"},
    )  # fmt: skip
    push_to_hub: str | None = push_to_hub_field()

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.context_size < 1 or self.max_seq_length < 8:
            raise ValueError("--context-size must be >= 1 and --max-seq-length >= 8")
        if self.model is not None and self.model.lower() == "none":
            self.model = None
        if self.encoder == "gru" and (self.model is not None or self.gru_dim < 2 or self.gru_dim % 2):
            raise ValueError("--encoder gru trains from scratch (no --model) and needs an even --gru-dim >= 2")
        if self.freeze_layers < 0 or (self.freeze_layers and self.encoder == "gru"):
            raise ValueError("--freeze-layers must be >= 0 and works with --encoder transformer")
        if not 0 <= self.wise_ft <= 1 or (self.wise_ft < 1 and self.model is None):
            raise ValueError("--wise-ft must be in [0, 1] and mixes with a pretrained --model (not from scratch)")
        if self.replay_dataset != "none" and (self.model is None or self.encoder == "gru"):
            raise ValueError("--replay-dataset keeps a pretrained --model's embeddings (transformer encoder); "
                             "from scratch there is nothing to keep")  # fmt: skip
        if self.replay_sentences < 1 or self.replay_weight <= 0:
            raise ValueError(f"--replay-sentences must be >= 1 and --replay-weight > 0, got {self.replay_sentences} "
                             f"and {self.replay_weight}")  # fmt: skip
        if self.dropout is not None and not 0 <= self.dropout < 1:
            raise ValueError(f"--dropout must be in [0, 1), got {self.dropout}")
        if self.pairs == "same-book" and self.dataset == "bookcorpus":
            raise ValueError("--pairs same-book needs documents with book ids; the hub's BookCorpus has none")
        if self.length_bucket_size < 0:
            raise ValueError(f"--length-bucket-size must be >= 0, got {self.length_bucket_size}")
        if self.hard_negatives < 0:
            raise ValueError(f"--hard-negatives must be >= 0, got {self.hard_negatives}")
        unminable = self.encoder == "gru" or self.pairs == "consecutive" or self.dataset == "bookcorpus"
        if self.hard_negatives and unminable:
            raise ValueError("--hard-negatives mines a finite corpus's pairs for --encoder transformer (shuffled "
                             "or same-book pairs); not streamed BookCorpus, the GRU, consecutive batches")  # fmt: skip
        if self.cache_chunk_size and (self.encoder == "gru" or self.pairs == "consecutive"):
            raise ValueError("--cache-chunk-size works with --encoder transformer on shuffled pairs; the GRU and "
                             "consecutive batches are not split into chunks")  # fmt: skip


def _objective(config: BookCorpusConfig) -> tuple[HypersphereLoss, bool]:
    """The loss, and whether it trains on batches of consecutive sentences (the ``quickthought`` term).

    The Quick-Thought objective scores each sentence against a batch of consecutive sentences, so its views are
    f(s) and g(s) of the same sentences, not neighbour pairs.
    """
    loss = HypersphereLoss(config.loss)
    names = {term.name for term in loss.objective}
    consecutive = "quickthought" in names
    if consecutive and names & {"align", "contrastive"}:
        raise ValueError("--loss: quickthought trains on consecutive batches (x = f(s), y = g(s) of the same "
                         "sentences); combine it only with uniform")  # fmt: skip
    if config.hard_negatives and not loss.takes_negatives():
        raise ValueError(f"--hard-negatives adds negatives to a contrastive term, and --loss {config.loss!r} has none; "
                         "e.g. --loss 'contrastive:1,tau=0.05 + uniform:0.22,t=2'")  # fmt: skip
    if consecutive and config.cache_chunk_size:
        raise ValueError("--cache-chunk-size: the quickthought objective trains on consecutive batches, which "
                         "are not split into chunks; drop --cache-chunk-size")  # fmt: skip
    return loss, consecutive


def _training_data(config: BookCorpusConfig, consecutive: bool) -> tuple[Any, list[str], list[Any]]:
    """``(training pairs or sentences, sentences for a from-scratch tokenizer, held-out documents)``."""
    if config.dataset == "bookcorpus":
        train_pairs = BookCorpusPairs()  # in corpus order: its first sentences are consecutive too
        # A from-scratch tokenizer learns its vocabulary from the start of the stream.
        train_sentences = [a for a, _ in itertools.islice(train_pairs, TOKENIZER_SAMPLE)]
        _, heldout = austen_splits()  # BookCorpus has no held-out split: evaluate on Persuasion
        return train_pairs, train_sentences, heldout
    train_docs, heldout = load_documents(config.dataset)
    train_sentences = SentenceCorpus.from_documents(train_docs).sentences
    if consecutive:
        from hsrl.models.quickthought import ConsecutiveSentenceDataset

        train_pairs: Any = ConsecutiveSentenceDataset(train_sentences)
    else:
        train_pairs = SentencePairDataset.from_documents(train_docs, context_size=config.context_size)
    if len(train_pairs) == 0:
        raise ValueError(f"--dataset {config.dataset}: no neighbour pairs in the training documents")
    return train_pairs, train_sentences, heldout


def _starting_encoder(config: BookCorpusConfig, accelerator: Any, train_sentences: list[str]) -> Any:
    """The encoder training starts from: a checkpoint, or (drawn once, by the main process) a from-scratch
    transformer or Quick-Thought GRU with a tokenizer trained on ``train_sentences``."""
    output = Path(config.output_dir)
    scratch = ScratchConfig(config.scratch_layers, config.scratch_hidden, max(1, config.scratch_hidden // 64),
                            4 * config.scratch_hidden, config.vocab_size, config.max_seq_length)  # fmt: skip
    start = config.model
    if config.encoder == "gru":
        from hsrl.models.quickthought import build_gru_encoder, load_encoder

        start = str(output / "gru-init")
        if accelerator.is_main_process:
            gru = build_gru_encoder(
                train_sentences, vocab_size=config.vocab_size, embedding_dim=config.gru_embedding_dim,
                hidden_dim=config.gru_dim, max_seq_length=config.max_seq_length, workdir=output / "gru-tokenizer",
            )  # fmt: skip
            save_text_encoder(gru, start)
        accelerator.wait_for_everyone()
        return load_encoder(start, device=str(accelerator.device))
    if start is None:
        start = str(output / "scratch-init")
        if accelerator.is_main_process:
            build_text_encoder(None, sentences=train_sentences, scratch=scratch, workdir=start,
                               max_seq_length=config.max_seq_length)  # fmt: skip
        accelerator.wait_for_everyone()
    return build_text_encoder(
        start, pooling=config.pooling, projection_dim=config.projection_dim,
        max_seq_length=config.max_seq_length, device=str(accelerator.device),
    )  # fmt: skip


def _hard_negative_pairs(
    config: BookCorpusConfig, accelerator: Any, encoder: Any, pairs: SentencePairDataset
) -> HardNegativePairs:
    """``pairs`` with one mined hard negative each (:mod:`hsrl.data.hard_negatives`).

    The main process embeds every training sentence with the *starting* model (under the run's autocast: bf16
    on this CPU is 1.7× faster and agrees with float32 to a cosine of 0.99998), mines ``--hard-negatives``
    candidates per anchor and writes them to ``OUTPUT/hard_negatives.json``; every process reads that file. A
    resumed run reads it instead of mining again, so it trains on the same candidates.
    """
    path = Path(config.output_dir) / "hard_negatives.json"
    wanted = {"k": config.hard_negatives, "sentences": len(pairs.sentences), "pairs": len(pairs)}
    if accelerator.is_main_process:
        saved = json.loads(path.read_text()) if config.resume and path.is_file() else {}
        if {key: saved.get(key) for key in wanted} != wanted:
            started = time.perf_counter()
            with accelerator.autocast():
                embeddings = encode_texts(encoder, pairs.sentences)
            mined = mine_hard_negatives(embeddings, pairs.sentences, pairs.pairs, pairs.groups or ["all"] * len(pairs),
                                        config.hard_negatives)  # fmt: skip
            atomic_write_json(path, {**wanted, "candidates": {str(i): found for i, found in mined.items()}})
            print(f"hard negatives: {config.hard_negatives} candidates for each of {len(mined):,} anchors, mined "
                  f"in {time.perf_counter() - started:.0f} s (the starting model, same book)")  # fmt: skip
    accelerator.wait_for_everyone()
    saved = json.loads(path.read_text())
    candidates = {int(i): found for i, found in saved["candidates"].items()}
    return HardNegativePairs(pairs.sentences, pairs.pairs, pairs.groups, candidates, seed=config.seed)


def _views(config: BookCorpusConfig, encoder: Any, consecutive: bool) -> tuple[Any, Any]:
    """``(collate, encode)``: how a batch is built, and how it becomes the two views ``(x, y)``."""
    from hsrl.models import quickthought

    if consecutive:  # unshuffled: each batch is one run of consecutive sentences
        return quickthought.consecutive_collate(encoder), quickthought.consecutive_encoder(encoder)
    if config.encoder == "gru":  # x = f(sentence), y = g(neighbour)
        return quickthought.gru_pair_collate(encoder), quickthought.gru_pair_encoder(encoder)
    return pair_collate(encoder), pair_encoder(encoder, bucket_size=config.length_bucket_size)


def run(config: BookCorpusConfig) -> int:
    """Train, evaluate against the starting model, and save; the exit status (0, 1 diverged, 2 bad input)."""
    output = Path(config.output_dir)
    try:
        loss, consecutive = _objective(config)
        eval_names = [n.strip() for n in config.eval_dataset.split(",") if n.strip() and n.strip() != "none"]
        eval_sets = {eval_set_name(name): load_eval_documents(name) for name in eval_names}
        train_pairs, train_sentences, heldout = _training_data(config, consecutive)
        replay_documents = None if config.replay_dataset == "none" else load_replay_documents(config.replay_dataset)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2

    with training_session(config) as accelerator:
        try:
            encoder = _starting_encoder(config, accelerator, train_sentences)
            if config.dropout is not None:
                set_dropout(encoder, config.dropout)
            if config.freeze_layers:
                trainable = freeze_lower_layers(encoder, config.freeze_layers)
                accelerator.print(f"freeze: embeddings + {config.freeze_layers} layers; {trainable:,} trainable")
        except (ValueError, OSError) as error:
            accelerator.print(f"error: {error}")
            return 2

        evaluate = dict(attribution=config.dataset == "austen", max_sentences=config.eval_max_sentences,
                        eval_sets=eval_sets)  # fmt: skip
        baseline = None
        if accelerator.is_main_process and not config.resume:
            baseline = evaluate_text_encoder(encoder, heldout, **evaluate)
            atomic_write_json(output / "baseline_metrics.json", baseline)
        accelerator.wait_for_everyone()

        start_weights = snapshot_weights(encoder) if config.wise_ft < 1 else None
        replay = None
        if replay_documents is not None:  # the starting model's embeddings, before any step
            replay = ReplayAnchor.from_documents(
                encoder, replay_documents, per_step=config.replay_sentences, weight=config.replay_weight,
                seed=config.seed, process=accelerator.process_index,
            )  # fmt: skip
            accelerator.print(f"replay: {len(replay.sentences):,} sentences of {config.replay_dataset}, "
                              f"{replay.per_step} per step, weight {config.replay_weight:g}")  # fmt: skip
        if config.hard_negatives:
            train_pairs = _hard_negative_pairs(config, accelerator, encoder, train_pairs)
        collate, encode = _views(config, encoder, consecutive)
        groups = getattr(train_pairs, "groups", None) if config.pairs == "same-book" else None
        loader = make_dataloader(train_pairs, config, collate_fn=collate, groups=groups,
                                 shuffle=config.pairs != "consecutive" and not consecutive)  # fmt: skip
        try:
            result = fit(encoder, loss, loader, config, accelerator=accelerator, encode=encode, regularizer=replay)
        except (TrainingDivergedError, ValueError) as error:
            accelerator.print(f"error: {error}")
            return 1

        if accelerator.is_main_process:
            if start_weights is not None:
                interpolate_weights(result.model, start_weights, config.wise_ft)
                print(f"wise-ft: weights = {1 - config.wise_ft:g}·start + {config.wise_ft:g}·trained")
            if baseline is None and (output / "baseline_metrics.json").is_file():
                baseline = json.loads((output / "baseline_metrics.json").read_text())
            trained = evaluate_text_encoder(result.model, heldout, **evaluate)
            save_model(result.model, output / "model")  # every hsrl command opens it
            summary = summary_block(baseline, trained, list(eval_sets), steps=result.steps,
                                    train_seconds=result.train_seconds)  # fmt: skip
            write_metrics(output / "metrics.json", {
                "summary": summary, "baseline": baseline, "trained": trained, "steps": result.steps,
                "final_loss": result.last_loss, "config": config_to_dict(config),
            })  # fmt: skip
            start_name = config.model or ("random init (gru)" if config.encoder == "gru" else "random init")
            if baseline:
                print(format_comparison(baseline, trained, (f"start ({start_name})", f"after {result.steps} steps")))
            print(format_summary(summary))
            print(f"model: {output / 'model'} (SentenceTransformer-compatible); metrics: {output / 'metrics.json'}")
            if config.encoder == "gru":
                print("open it with hsrl.models.quickthought.load_encoder(path) "
                      "or SentenceTransformer(path, trust_remote_code=True)")  # fmt: skip
            return publish_run(output, kind="text", push_to_hub=config.push_to_hub)  # card; upload if asked
    return 0
