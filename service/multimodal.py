"""A two-tower model (``recipes/image_text.py``) served as two encoders into one space.

``hsrl serve --multimodal-model [NAME=]PATH`` loads the text tower (a sentence-transformers folder with its
projection) as the text encoder ``NAME-text`` and the image tower as the image encoder ``NAME-image``. Both
give vectors on the same sphere, so ``/search`` with a ``text`` query on an index of images (or an ``image``
query on an index of captions) finds the other modality, and ``/v1/embeddings`` embeds either, by the input's
form or its explicit ``modality`` field.
"""

from __future__ import annotations

from pathlib import Path

from hsrl_service.encoders import Encoder, ImageEncoder, ImagePreprocessing, TextEncoder

__all__ = ["load_multimodal_encoders"]


def load_multimodal_encoders(path: str | Path, *, device: str | None = None, name: str | None = None) -> list[Encoder]:
    """The text and image encoders of a two-tower model folder (``ValueError`` if it is not one)."""
    folder = Path(path)
    if not folder.is_dir():
        raise ValueError(f"multimodal model folder not found: {folder}")
    try:
        from hsrl.models import image as image_models
        from hsrl.models.two_tower import load_image_tower, load_text_tower, read_two_tower_config
    except ImportError as error:
        raise ValueError(f"multimodal models are not available in this install ({error})") from error
    read_two_tower_config(folder)
    device = device or "cpu"
    base = name or folder.name
    text = TextEncoder(load_text_tower(folder, device=device), f"{base}-text")
    tower = load_image_tower(folder, device=device)
    recipe = image_models.load_preprocess(folder / "image")
    # The image tower takes uint8 and normalises inside (the encoder's Normalize layer): no mean/std here.
    preprocessing = ImagePreprocessing(size=recipe.size, channels=recipe.channels, resize=recipe.resize)
    image = ImageEncoder(tower, f"{base}-image", preprocessing, dim=tower.dim, device=device)
    created = int(folder.stat().st_mtime)
    text.created = image.created = created
    return [text, image]
