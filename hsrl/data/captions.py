"""Captions generated from Fashion-MNIST's labels: the offline default for image–text training.

These captions come from the class label alone (templates x synonyms x a coarse category), so a model
trained on them learns to put an image near the words for its class; it demonstrates the image–text
machinery, not language understanding. Real image–caption data goes through :mod:`hsrl.data.pairs`.

Held out for evaluation only (never produced for training):

* the templates in :data:`EVAL_TEMPLATES` (zero-shot prompts and retrieval queries use them), and
* the phrasings in :data:`EVAL_SYNONYMS` (e.g. "tee", "jeans"), which prompts average in with the class name,
* optionally whole classes (``unseen=...``): no caption and no image of them is trained on, so their
  zero-shot accuracy measures what a locked text tower transfers from language alone.

Example:
    >>> captions = FashionCaptions()
    >>> captions.caption(9, random.Random(0))  # doctest: +SKIP
    'a greyscale photo of an ankle boot'
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field

__all__ = [
    "CATEGORIES",
    "CLASS_NAMES",
    "EVAL_SYNONYMS",
    "EVAL_TEMPLATES",
    "SYNONYMS",
    "TRAIN_TEMPLATES",
    "FashionCaptions",
    "with_article",
]

#: The canonical name of each Fashion-MNIST class (label order), as the prompts use it.
CLASS_NAMES = (
    "t-shirt", "trousers", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle boot",
)  # fmt: skip

#: Training phrasings per class (the canonical name included).
SYNONYMS: tuple[tuple[str, ...], ...] = (
    ("t-shirt", "tee shirt", "short-sleeved top", "top"),
    ("trousers", "pants", "slacks", "long trousers"),
    ("pullover", "sweater", "jumper", "knitted pullover"),
    ("dress", "frock", "summer dress", "gown"),
    ("coat", "jacket", "overcoat", "winter coat"),
    ("sandal", "open-toed sandal", "summer sandal", "strappy sandal"),
    ("shirt", "button-up shirt", "collared shirt", "blouse"),
    ("sneaker", "trainer", "running shoe", "sports shoe"),
    ("bag", "handbag", "purse", "tote bag"),
    ("ankle boot", "boot", "short boot", "bootie"),
)

#: Phrasings never seen in training; prompts average them in with the canonical name.
EVAL_SYNONYMS: tuple[tuple[str, ...], ...] = (
    ("crew-neck tee",), ("jeans",), ("woolly sweater",), ("evening dress",), ("raincoat",),
    ("flip-flop sandal",), ("dress shirt",), ("athletic shoe",), ("shoulder bag",), ("leather boot",),
)  # fmt: skip

#: The coarse category of each class.
CATEGORIES = ("top", "bottom", "top", "one-piece", "top", "footwear", "top", "footwear", "bag", "footwear")

#: ``{a}``: the phrase with its article ("an ankle boot", "a pair of trousers"); ``{x}``: the bare phrase;
#: ``{cat}``: the coarse category.
TRAIN_TEMPLATES = (
    "a photo of {a}",
    "a picture of {a}",
    "an image of {a}",
    "{a}",
    "{x}",
    "a greyscale photo of {a}",
    "a product photo of {a}",
    "a low-resolution photo of {a}",
    "{a}, a kind of {cat}",
    "a {cat} item: {a}",
    "a small picture of {a}",
    "this is {a}",
)

#: Held out: only zero-shot prompts and retrieval queries use these.
EVAL_TEMPLATES = (
    "a close-up photo of the {x}",
    "a black and white picture of the {x}",
    "a cropped photo of {a}",
    "a blurry photo of the {x}",
    "a catalogue image showing {a}",
)

_PLURAL = {"trousers", "pants", "slacks", "long trousers", "jeans"}


def with_article(phrase: str) -> str:
    """``"a bag"``, ``"an ankle boot"``, ``"a pair of trousers"`` (plural garments come in pairs)."""
    if phrase in _PLURAL:
        return f"a pair of {phrase}"
    return f"{'an' if phrase[0] in 'aeiou' else 'a'} {phrase}"


def _fill(template: str, phrase: str, label: int) -> str:
    return template.format(a=with_article(phrase), x=phrase, cat=CATEGORIES[label])


@dataclass(frozen=True)
class FashionCaptions:
    """The caption generator: training captions drawn per item, evaluation prompts held out.

    Args:
        unseen: class labels with no training caption at all (their images are dropped from training too).
    """

    unseen: tuple[int, ...] = field(default=())

    def __post_init__(self) -> None:
        bad = [c for c in self.unseen if not 0 <= c < len(CLASS_NAMES)]
        if bad:
            raise ValueError(f"unseen classes must be labels 0..{len(CLASS_NAMES) - 1}, got {bad}")
        if len(set(self.unseen)) >= len(CLASS_NAMES) - 1:
            raise ValueError("at least two classes must stay in training")

    def caption(self, label: int, rng: random.Random) -> str:
        """One training caption for ``label``: a random training template and phrasing."""
        if label in self.unseen:
            raise ValueError(f"class {CLASS_NAMES[label]!r} is held out: it has no training captions")
        return _fill(rng.choice(TRAIN_TEMPLATES), rng.choice(SYNONYMS[label]), label)

    def training_captions(self) -> list[str]:
        """Every caption training can produce (for a locked text tower's cache), in a fixed order."""
        return [_fill(t, s, label) for label in range(len(CLASS_NAMES)) if label not in self.unseen
                for s in SYNONYMS[label] for t in TRAIN_TEMPLATES]  # fmt: skip

    def prompts(self, label: int) -> list[str]:
        """The held-out prompts of a class: every evaluation template x (name + held-out phrasings)."""
        phrases = (CLASS_NAMES[label], *EVAL_SYNONYMS[label])
        return [_fill(t, p, label) for p in phrases for t in EVAL_TEMPLATES]

    def eval_caption(self, label: int, rng: random.Random) -> str:
        """One held-out caption (a retrieval query) for ``label``."""
        return _fill(rng.choice(EVAL_TEMPLATES), CLASS_NAMES[label], label)

    @staticmethod
    def parse_unseen(names: Sequence[str]) -> tuple[int, ...]:
        """Class names (or label numbers) to labels; ``ValueError`` naming an unknown one."""
        labels = []
        for name in names:
            key = name.strip().lower()
            if key.isdigit() and int(key) < len(CLASS_NAMES):
                labels.append(int(key))
            elif key in CLASS_NAMES:
                labels.append(CLASS_NAMES.index(key))
            else:
                raise ValueError(f"unknown Fashion-MNIST class {name!r}; choose from {', '.join(CLASS_NAMES)}")
        return tuple(sorted(set(labels)))
