"""Two towers: locks (frozen, partly unlocked, BatchNorm kept), the caption cache, the folder round trip,
the recipe end to end, and the errors."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from hsrl.data.captions import FashionCaptions
from hsrl.losses_crossmodal import CrossModalLoss
from hsrl.models.image import build_encoder
from hsrl.models.text import build_text_encoder
from hsrl.models.two_tower import (
    ImageTower,
    TextTower,
    TwoTowerModel,
    is_two_tower_folder,
    load_two_tower,
    save_two_tower,
)

RECIPES = Path(__file__).resolve().parents[1] / "recipes"


def _image_encoder(dim: int = 16) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_encoder("small_alexnet", in_channels=1, image_size=28, dim=dim, width=0.0625, fc_dim=256)


def _model(*, lock_text: bool = True, unlocked_layers: int = 0, lock_image: bool = False, groups: int = 0,
           dim: int = 8) -> TwoTowerModel:  # fmt: skip
    torch.manual_seed(0)
    text = TextTower(build_text_encoder("minilm", projection_dim=dim), lock=lock_text, unlocked_layers=unlocked_layers)
    image = ImageTower(_image_encoder(), dim, lock=lock_image, unlocked_groups=groups)
    return TwoTowerModel(image, text)


def _batch(n: int = 6) -> tuple[torch.Tensor, list[str]]:
    g = torch.Generator().manual_seed(1)
    images = torch.randint(0, 256, (n, 1, 28, 28), dtype=torch.uint8, generator=g)
    captions = [f"a photo of a {w}" for w in ("bag", "boot", "coat", "dress", "shirt", "sandal")][:n]
    return images, captions


def _grads(model: TwoTowerModel) -> dict[str, bool]:
    images, captions = _batch()
    x, y = model(images, captions)
    CrossModalLoss("align:1 + uniform:1 + clip:1", model).terms(x, y)["loss"].backward()
    return {name: p.grad is not None and bool(p.grad.abs().sum() > 0) for name, p in model.named_parameters()}


def test_locked_text_tower_trains_only_its_projection() -> None:
    grads = _grads(_model(lock_text=True))
    text = {n: g for n, g in grads.items() if n.startswith("text.")}
    assert [n for n, g in text.items() if g] == ["text.encoder.2.linear.weight", "text.encoder.2.linear.bias"]
    assert all(g for n, g in grads.items() if n.startswith("image.") and "num_batches" not in n)
    assert grads["log_logit_scale"]


def test_partly_unlocked_text_tower_trains_its_last_layers() -> None:
    model = _model(lock_text=True, unlocked_layers=1)
    assert not model.text.cached
    trainable = {n for n, p in model.text.named_parameters() if p.requires_grad}
    assert any(".layer.5." in n for n in trainable) and not any(".layer.4." in n for n in trainable)
    grads = _grads(model)
    [last] = [g for n, g in grads.items() if n.endswith("encoder.layer.5.output.dense.weight")]
    [before] = [g for n, g in grads.items() if n.endswith("encoder.layer.4.output.dense.weight")]
    assert last and not before


def test_unlocked_text_tower_trains_everything() -> None:
    model = _model(lock_text=False)
    frozen = [n for n, p in model.text.named_parameters() if not p.requires_grad]
    assert all(".pooler." in n for n in frozen) and not model.text.cached  # BERT's pooler is unused (and frozen)


def test_locked_image_tower_keeps_weights_and_batchnorm_statistics() -> None:
    model = _model(lock_image=True, groups=1)
    before = {k: v.clone() for k, v in model.image.encoder.state_dict().items()}
    model.train()
    grads = _grads(model)
    assert grads["image.projection.weight"] and grads["image.encoder.blocks.output.weight"]
    assert not grads["image.encoder.blocks.conv1.0.weight"]
    after = model.image.encoder.state_dict()
    torch.testing.assert_close(after["blocks.conv1.1.running_mean"], before["blocks.conv1.1.running_mean"])
    assert not model.image.encoder.blocks["conv1"].training and model.image.encoder.blocks["output"].training


def test_cached_text_embeddings_equal_the_transformer() -> None:
    model = _model(lock_text=True)
    _, captions = _batch()
    model.train()
    cached = model.text(captions)
    assert set(captions) <= set(model.text._cache)
    direct = model.text.encoder.encode(captions, convert_to_tensor=True, normalize_embeddings=True)
    torch.testing.assert_close(cached, direct.float(), atol=1e-5, rtol=1e-5)


def test_folder_round_trip_gives_the_same_embeddings(tmp_path: Path) -> None:
    model = _model().eval()
    with torch.no_grad():
        model.log_logit_scale.fill_(2.5)
    images, captions = _batch()
    folder = save_two_tower(model, tmp_path / "mm")
    assert is_two_tower_folder(folder) and (folder / "text" / "modules.json").is_file()
    config = json.loads((folder / "hsrl_multimodal.json").read_text())
    assert config["dim"] == 8 and config["logit_scale"] == pytest.approx(float(torch.tensor(2.5).exp()))
    loaded = load_two_tower(folder)
    torch.testing.assert_close(loaded.encode_images(images), model.encode_images(images))
    torch.testing.assert_close(loaded.encode_texts(captions), model.encode_texts(captions), atol=1e-6, rtol=1e-5)
    # The one model-folder contract opens it as kind two_tower, encoding either modality.
    from hsrl.models.folder import model_kind, open_model, save_model

    opened = open_model(folder)
    assert model_kind(folder) == "two_tower" and opened.modalities == ("image", "text") and opened.dim == 8
    np.testing.assert_allclose(opened.encode(captions, modality="text"), model.encode_texts(captions).numpy(),
                               atol=1e-5)  # fmt: skip
    with pytest.raises(ValueError, match="say which"):
        opened.encode(captions)
    assert model_kind(save_model(model, tmp_path / "again")) == "two_tower"
    # The text tower alone is a plain sentence-transformers folder embedding into the shared space.
    from sentence_transformers import SentenceTransformer

    plain = SentenceTransformer(str(folder / "text"), device="cpu")
    torch.testing.assert_close(torch.from_numpy(plain.encode(captions, normalize_embeddings=True)),
                               model.encode_texts(captions), atol=1e-5, rtol=1e-5)  # fmt: skip


def test_mismatched_tower_dims_without_projection_is_one_line() -> None:
    text = TextTower(build_text_encoder("minilm", projection_dim=None))
    with pytest.raises(ValueError, match="image tower gives 16-d vectors and the text tower 384-d"):
        TwoTowerModel(ImageTower(_image_encoder(16), None), text)
    with pytest.raises(ValueError, match=r"--lock-text-unlocked-layers must be 0\.\.6"):
        TextTower(build_text_encoder("minilm", projection_dim=8), unlocked_layers=9)


def test_not_a_two_tower_folder(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not an hsrl multimodal model folder"):
        load_two_tower(tmp_path)


def _recipe():
    sys.path.insert(0, str(RECIPES))
    try:
        import image_text
    finally:
        sys.path.remove(str(RECIPES))
    return image_text


def test_recipe_end_to_end(tmp_path: Path) -> None:
    out = tmp_path / "run"
    code = _recipe().main(["--output-dir", str(out), "--max-steps", "3", "--batch-size", "32", "--width", "0.0625",
                           "--log-with", "none", "--no-progress", "--eval-test-size", "300", "--eval-pairs", "100",
                           "--loss", "align:1 + uniform:1 + siglip:0.1", "--log-every", "1",
                           "--unseen-classes", "sandal,bag"])  # fmt: skip
    assert code == 0
    metrics = json.loads((out / "metrics.json").read_text())
    summary = metrics["summary"]
    for key in ("zero_shot_accuracy", "text_to_image_recall@10", "image_to_text_recall@10", "modality_gap",
                "align", "uniform_image", "uniform_text", "zero_shot_accuracy_unseen_classes"):  # fmt: skip
        assert isinstance(summary[key], float)
    assert metrics["steps"] == 3 and metrics["evaluation"]["unseen_classes"] == ["sandal", "bag"]
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert {"train/xm_align", "train/uniform_image", "train/uniform_text", "train/modality_gap",
            "train/logit_bias"} <= set(log[-1])  # fmt: skip
    assert is_two_tower_folder(out / "model")
    # Resume: a longer run continues from the checkpoint rather than starting over.
    code = _recipe().main(["--output-dir", str(out), "--max-steps", "4", "--batch-size", "32", "--width", "0.0625",
                           "--log-with", "none", "--no-progress", "--no-eval", "--resume", "latest",
                           "--loss", "align:1 + uniform:1 + siglip:0.1", "--unseen-classes", "sandal,bag"])  # fmt: skip
    assert code == 0 and json.loads((out / "metrics.json").read_text())["steps"] == 4


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--dataset", "nowhere.jsonl"], "pairs nowhere.jsonl: no such file"),
        (["--unseen-classes", "hat"], "unknown Fashion-MNIST class 'hat'"),
        (["--loss", "clip:1,tau=-1"], "clip parameter tau must be a finite number > 0"),
    ],
)
def test_recipe_bad_input_is_one_line(tmp_path: Path, args: list[str], message: str, capsys) -> None:
    code = _recipe().main(["--output-dir", str(tmp_path), "--max-steps", "1", *args])
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_fashion_captions_unseen_must_leave_two_classes() -> None:
    with pytest.raises(ValueError, match="at least two classes"):
        FashionCaptions(tuple(range(9)))
