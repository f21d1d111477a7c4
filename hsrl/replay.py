"""Replay anchoring: fine-tune on one domain, keep text of other domains where the starting model put it.

Fine-tuning all-MiniLM-L6-v2 on neighbouring sentences of novels moves *every* sentence, not only the novels':
the previous ``make demo`` (align:2 + uniform:1) cost a fifth of next-sentence retrieval on the CIA World Factbook
(a domain it never saw), whose sentences it crowded together (Factbook uniformity −3.43 → −2.61). Feeding
other-domain text through the same objective as pairs helps little (Factbook 0.88×, and uniformity worse than the
start); anchoring it keeps 0.97× (``benchmarks/results/text_objective_probe.md``).
Each step, ``R`` sentences of a replay corpus are embedded by the model in training and pulled toward their
embeddings under the *starting* model:

.. math::

    L_{replay} = \\mu \\cdot \\frac{1}{R} \\sum_{i=1}^{R} \\lVert f(s_i) - f_0(s_i) \\rVert_2^2

(learning without forgetting, Li & Hoiem 2016, on replay text; both embeddings are unit vectors, so each term is
``2 − 2 cos``). ``f₀``'s embeddings are computed once, before training. The replay corpus must not be an evaluation
set. Two are embedded: ``wordnet``, a sample of WordNet 3.0's definitions (one short expository sentence per word
sense, over the whole vocabulary), which ``make demo`` uses, and ``pydoc``, the Python language reference that
ships with every Python (``pydoc_data.topics``: prose about software). The held-out check is the Factbook's
history and politics, which neither contains.

*What* is anchored matters more than how hard: anchoring pydoc at weight 4 or 16 keeps the same 0.90-0.94× of the
Factbook, while WordNet's definitions at weight 4 keep 1.02× at 50 steps and 0.96× at 100 (pydoc: 0.93×, 0.89×),
with more Persuasion recall and both alignment and uniformity better than the start. The anchor holds the regions
of embedding space its sentences occupy; definitions of every word occupy far more of general English than
sentences about software do.

The term is per process and per step; its sentences are drawn from a generator seeded by ``(seed, step, process)``,
so a resumed run draws the same ones and processes draw different ones. :func:`hsrl.training.fit` adds it to the
loss (``regularizer=``), with or without gradient caching.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from hsrl.data.text import Document, SentenceCorpus, read_shipped_corpus
from hsrl.data.text_sources import read_documents

__all__ = ["REPLAY_CORPORA", "ReplayAnchor", "load_python_reference", "load_replay_documents", "load_wordnet_glosses"]

#: Replay corpora known by name (anything else is a path).
REPLAY_CORPORA = ("wordnet", "pydoc")
_WORDNET_RESOURCE = "corpora/wordnet_glosses.jsonl.gz"

#: Paragraph heads of pydoc's topics ("The "assert" statement" underlined with ****).
_UNDERLINE = re.compile(r"^[*=\-~^]+$")


def load_python_reference() -> list[Document]:
    """The Python language reference's help topics (``pydoc_data.topics``, in every CPython) as prose documents.

    One document per topic; code blocks (indented paragraphs), grammar rules (``::=``), interactive examples
    (``>>>``), headings and paragraphs of fewer than six words are left out, so what remains is explanatory prose.
    The text comes with the running Python, so it differs a little between Python versions.
    """
    from pydoc_data.topics import topics

    documents = []
    for name, text in sorted(topics.items()):
        paragraphs = []
        for block in re.split(r"\n\s*\n", text):
            lines = block.splitlines()
            if not lines or lines[0].startswith(" ") or _UNDERLINE.match(lines[-1].strip()):
                continue
            paragraph = " ".join(line.strip() for line in lines)
            if len(paragraph.split()) >= 6 and "::=" not in paragraph and ">>>" not in paragraph:
                paragraphs.append(paragraph)
        if paragraphs:
            documents.append(Document.from_paragraphs(f"pydoc/{name}", paragraphs))
    return documents


def load_wordnet_glosses() -> list[Document]:
    """The embedded sample of WordNet 3.0's definitions: 2,927 glosses over every part of speech, one sentence each.

    Short expository sentences over the whole English vocabulary (people, places, institutions, nature, actions),
    built by ``tools/build_wordnet_glosses.py`` (WordNet 3.0 licence in ``hsrl/data/corpora/WORDNET_LICENSE``).
    One document per part of speech, glosses in WordNet's file order.
    """
    by_pos: dict[str, list[str]] = {}
    for row in read_shipped_corpus(_WORDNET_RESOURCE):
        by_pos.setdefault(row["pos"], []).append(row["text"])
    return [Document.from_paragraphs(f"wordnet/{pos}", glosses) for pos, glosses in by_pos.items()]


def load_replay_documents(name: str) -> list[Document]:
    """``wordnet`` (:func:`load_wordnet_glosses`), ``pydoc`` (:func:`load_python_reference`) or every document of a
    local text file or folder.

    Raises:
        ValueError: one line naming ``--replay-dataset`` when the path is missing, unreadable or empty.
    """
    if name == "wordnet":
        documents = load_wordnet_glosses()
    elif name == "pydoc":
        documents = load_python_reference()
    elif not Path(name).exists():
        raise ValueError(f"--replay-dataset {name}: no such file or folder (or 'wordnet', WordNet's definitions, or "
                         "'pydoc', the Python reference)")  # fmt: skip
    else:
        try:
            documents = read_documents(name)
        except ValueError as error:
            raise ValueError(f"--replay-dataset {name}: {error}") from None
    if not any(document.sentences for document in documents):
        raise ValueError(f"--replay-dataset {name}: no sentences in it")
    return documents


class ReplayAnchor:
    """``L_replay`` of the module docstring, as a :func:`hsrl.training.fit` regularizer: ``anchor(model, step)``.

    Args:
        encoder: the *starting* sentence-transformers model; its embeddings of ``sentences`` are the targets.
        sentences: the replay sentences.
        per_step: sentences embedded each step (``R``).
        weight: ``μ``.
        seed: the run's seed; ``process`` (the process index) is mixed in so processes draw different sentences.
    """

    name = "replay"

    def __init__(self, encoder: Any, sentences: Sequence[str], *, per_step: int, weight: float, seed: int = 0,
                 process: int = 0) -> None:  # fmt: skip
        from hsrl.models.text import encode_texts

        if per_step < 1 or weight <= 0:
            raise ValueError(f"--replay-sentences must be >= 1 and --replay-weight > 0, got {per_step}, {weight}")
        if not sentences:
            raise ValueError("the replay corpus has no sentences")
        self.sentences = list(sentences)
        self.per_step = min(per_step, len(self.sentences))
        self.weight = float(weight)
        self.seed, self.process = seed, process
        self.preprocess = encoder.preprocess  # the tokenizer; the model in training may be wrapped (DDP)
        self.targets = encode_texts(encoder, self.sentences)  # f0, unit vectors, float32 on the CPU

    @classmethod
    def from_documents(cls, encoder: Any, documents: Sequence[Document], **kwargs: Any) -> ReplayAnchor:
        return cls(encoder, SentenceCorpus.from_documents(documents).sentences, **kwargs)

    def indices(self, step: int) -> Tensor:
        """The replay sentences of ``step``: a function of ``(seed, step, process)`` only."""
        generator = torch.Generator().manual_seed((self.seed * 1_000_003 + step) * 1_009 + self.process)
        return torch.randperm(len(self.sentences), generator=generator)[: self.per_step]

    def embed(self, model: Any, step: int) -> tuple[Tensor, Tensor]:
        """``(f(s_i), f₀(s_i))`` for the replay sentences of ``step``: the model's unit embeddings (float32, with
        gradients) and their targets, on the model's device."""
        rows = self.indices(step)
        texts = [self.sentences[i] for i in rows.tolist()]
        device = next(model.parameters()).device
        features = {k: v.to(device) if isinstance(v, Tensor) else v for k, v in self.preprocess(texts).items()}
        z = model(features)["sentence_embedding"]
        # In float32 even under autocast: a bf16 unit vector is off by up to 2**-8, as large as the term itself.
        z = torch.nn.functional.normalize(z.float(), dim=1)
        return z, self.targets[rows].to(device)

    def penalty(self, z: Tensor, targets: Tensor) -> Tensor:
        """``μ · mean_i ‖z_i − targets_i‖²``."""
        return self.weight * (z - targets).pow(2).sum(dim=1).mean()

    def __call__(self, model: Any, step: int) -> Tensor:
        return self.penalty(*self.embed(model, step))
