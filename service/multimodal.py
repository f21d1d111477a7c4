"""A two-tower model (``recipes/image_text.py``) served as two encoders into one space.

``hsrl serve --multimodal-model [NAME=]PATH`` loads the text tower (a sentence-transformers folder with its
projection) as the text encoder ``NAME-text`` and the image tower as the image encoder ``NAME-image``. Both
give vectors on the same sphere, so ``/search`` with a ``text`` query on an index of images (or an ``image``
query on an index of captions) finds the other modality, and ``/v1/embeddings`` embeds either, by the input's
form or its explicit ``modality`` field.
"""

from __future__ import annotations

from pathlib import Path

from hsrl_service.encoders import Encoder, ImageEncoder, TextEncoder

__all__ = ["load_multimodal_encoders"]


def load_multimodal_encoders(path: str | Path, *, device: str | None = None, name: str | None = None) -> list[Encoder]:
    """The text and image encoders of a two-tower model folder (``ValueError`` if it is not one)."""
    folder = Path(path)
    if not folder.is_dir():
        raise ValueError(f"multimodal model folder not found: {folder}")
    from hsrl.models.folder import open_model  # slow to import: only when a model is served

    opened = open_model(folder, device=device or "cpu")
    if opened.kind != "two_tower":
        raise ValueError(f"--multimodal-model {folder}: a {opened.kind} model folder, not a two-tower one")
    base = name or folder.name
    text = TextEncoder(opened.module.text.encoder, f"{base}-text")
    image = ImageEncoder(opened.module.image, f"{base}-image", opened.preprocess, dim=opened.dim,
                         device=device or "cpu")  # fmt: skip
    text.created = image.created = int(folder.stat().st_mtime)
    return [text, image]
