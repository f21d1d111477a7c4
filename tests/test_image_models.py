"""Image encoders: the paper's SmallAlexNet layout, ResNets, layer taps, unit-norm output, model folders."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from hsrl.models.image import (
    CONFIG_FILE,
    WEIGHTS_FILE,
    ImagePreprocess,
    SmallAlexNet,
    build_encoder,
    headline_layers,
    load,
    load_preprocess,
    resnet18,
    resnet50,
    save,
    small_alexnet,
)


def images(n: int, channels: int, size: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (n, channels, size, size), generator=torch.Generator().manual_seed(seed)).byte()


def test_small_alexnet_has_the_papers_layout() -> None:
    model = small_alexnet()  # 3 x 64 x 64 in, 128 out
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [96, 192, 384, 384, 192]
    assert all(c.kernel_size == (3, 3) and c.bias is None for c in convs)
    pools = [name for name, block in model.blocks.items() if any(isinstance(m, nn.MaxPool2d) for m in block.modules())]
    assert pools == ["conv1", "conv2", "conv5"]
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(192 * 7 * 7, 4096), (4096, 4096), (4096, 128)]
    assert sum(isinstance(m, nn.BatchNorm1d) for m in model.modules()) == 2


def test_small_alexnet_taps_and_unit_norm_output() -> None:
    model = small_alexnet().eval()
    taps = model.forward_taps(images(3, 3, 64), ["conv5", "fc7", "output"])
    assert taps["conv5"].shape == (3, 192, 7, 7) and taps["fc7"].shape == (3, 4096)
    assert taps["output"].shape == (3, 128)
    torch.testing.assert_close(taps["output"].norm(dim=1), torch.ones(3))
    assert (taps["fc7"] >= 0).all()  # after BN + ReLU, as the paper's fc7 tap
    torch.testing.assert_close(model.forward_features(images(3, 3, 64), "fc7"), taps["fc7"])
    torch.testing.assert_close(model(images(3, 3, 64)), taps["output"])
    with pytest.raises(ValueError, match="no layer 'fc9'"):
        model.forward_features(images(1, 3, 64), "fc9")


def test_greyscale_28px_small_alexnet_and_uint8_equals_scaled_float() -> None:
    model = small_alexnet(in_channels=1, image_size=28, width=0.25, fc_dim=512, mean=(0.3,), std=(0.35,)).eval()
    x = images(4, 1, 28)
    assert model.forward_features(x, "conv5").shape == (4, 48, 2, 2)
    torch.testing.assert_close(model(x), model(x.float() / 255))
    with pytest.raises(ValueError, match="at least 15 px"):
        small_alexnet(image_size=14)


@pytest.mark.parametrize("factory, width", [(resnet18, 512), (resnet50, 2048)])
def test_resnets_with_cifar_stem_taps_and_unit_norm(factory, width: int) -> None:
    model = factory(image_size=32, cifar_stem=True).eval()
    assert model.backbone.conv1.kernel_size == (3, 3) and isinstance(model.backbone.maxpool, nn.Identity)
    taps = model.forward_taps(images(2, 3, 32), ["layer4", "pool", "output"])
    assert taps["layer4"].shape == (2, width, 4, 4)  # 32 px / 8: the stem keeps full resolution
    assert taps["pool"].shape == (2, width) and taps["output"].shape == (2, 128)
    torch.testing.assert_close(taps["output"].norm(dim=1), torch.ones(2))


def test_resnet_imagenet_stem_for_greyscale() -> None:
    model = resnet18(in_channels=1, image_size=64, cifar_stem=False).eval()
    assert model.backbone.conv1.in_channels == 1 and model.backbone.conv1.stride == (2, 2)
    assert model.forward_features(images(2, 1, 64), "layer4").shape == (2, 512, 2, 2)


@pytest.mark.parametrize("name", ["small_alexnet", "resnet18"])
def test_save_and_load_round_trip_gives_the_same_outputs(tmp_path: Path, name: str) -> None:
    kwargs = {"width": 0.25, "fc_dim": 256} if name == "small_alexnet" else {"cifar_stem": True}
    model = build_encoder(name, in_channels=3, image_size=32, dim=16, mean=(0.4, 0.5, 0.6), std=(0.2, 0.3, 0.25),
                          resize=36, **kwargs)  # fmt: skip
    model.train()
    model(images(8, 3, 32))  # moves the BatchNorm running statistics away from their init
    model.eval()
    folder = save(model, tmp_path / "model")
    assert sorted(p.name for p in folder.iterdir()) == [CONFIG_FILE, WEIGHTS_FILE]
    assert not any(p.name.startswith(".tmp") for p in tmp_path.iterdir())
    config = json.loads((folder / CONFIG_FILE).read_text())
    assert config["architecture"] == name and config["dim"] == 16
    restored = load(folder)
    assert type(restored) is type(model) and not restored.training
    x = images(5, 3, 32, seed=1)
    torch.testing.assert_close(restored(x), model(x), rtol=0, atol=0)
    assert load_preprocess(folder) == ImagePreprocess(32, 3, (0.4, 0.5, 0.6), (0.2, 0.3, 0.25), 36)
    assert restored.preprocess == model.preprocess
    save(small_alexnet(image_size=32, width=0.1, fc_dim=64), folder)  # overwriting replaces the folder whole
    assert load(folder).config["width"] == 0.1


def test_load_errors_are_clear(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="not an hsrl image model folder"):
        load(tmp_path)
    (tmp_path / CONFIG_FILE).write_text('{"format": "something-else"}')
    with pytest.raises(ValueError, match="does not describe an hsrl image encoder"):
        load(tmp_path)
    with pytest.raises(ValueError, match="unknown encoder"):
        build_encoder("vgg16")


def test_channels_last_gives_the_same_outputs() -> None:
    torch.manual_seed(0)
    plain = small_alexnet(image_size=32, width=0.25, fc_dim=256).eval()
    fast = small_alexnet(image_size=32, width=0.25, fc_dim=256, channels_last=True).eval()
    fast.load_state_dict(plain.state_dict())
    assert fast.blocks["conv2"][0].weight.is_contiguous(memory_format=torch.channels_last)
    x = images(3, 3, 32)
    torch.testing.assert_close(fast(x), plain(x), rtol=1e-4, atol=1e-5)


def test_compile_option_keeps_the_class_and_the_weight_names(tmp_path: Path) -> None:
    compiled = build_encoder("small_alexnet", compile=True, image_size=32, width=0.1, fc_dim=64)
    assert isinstance(compiled, SmallAlexNet) and compiled._compiled_call_impl is not None
    reference = small_alexnet(image_size=32, width=0.1, fc_dim=64)
    assert list(compiled.state_dict()) == list(reference.state_dict())
    assert load(save(compiled, tmp_path / "m")).config == compiled.config


@pytest.mark.parametrize(
    ("evaluated", "expected"),
    [
        (["fc7", "output"], ("fc7", "output")),  # the paper's taps
        (["conv5", "fc7", "output"], ("fc7", "output")),
        (["output"], ("output", "output")),  # fc7 left out: the linear headline falls back, no KeyError
        (["conv5"], ("conv5", "conv5")),
        (["conv5", "fc7"], ("fc7", "fc7")),
    ],
)
def test_headline_layers_only_name_layers_that_were_evaluated(evaluated: list[str], expected: tuple) -> None:
    assert headline_layers("small_alexnet", evaluated) == expected


def test_headline_layers_needs_a_layer() -> None:
    with pytest.raises(ValueError, match="no layers"):
        headline_layers("resnet18", [])


def test_a_folder_saved_either_way_opens_both_ways(tmp_path: Path) -> None:
    from hsrl.models.image import ImageEncoder, ResNetEncoder

    model = small_alexnet(in_channels=1, image_size=28, dim=16, width=0.1).eval()
    x = images(3, 1, 28)
    save(model, tmp_path / "saved")
    model.save_pretrained(tmp_path / "pretrained")  # PyTorchModelHubMixin
    assert {CONFIG_FILE, WEIGHTS_FILE} <= {p.name for p in (tmp_path / "pretrained").iterdir()}
    for folder in ("saved", "pretrained"):
        for opened in (load(tmp_path / folder), ImageEncoder.from_pretrained(tmp_path / folder),
                       SmallAlexNet.from_pretrained(tmp_path / folder)):  # fmt: skip
            assert isinstance(opened, SmallAlexNet) and not opened.training
            assert torch.equal(opened(x), model(x)), folder
    assert load_preprocess(tmp_path / "pretrained") == model.preprocess
    with pytest.raises(ValueError, match="holds a small_alexnet encoder, not a ResNetEncoder"):
        ResNetEncoder.from_pretrained(tmp_path / "saved")


def test_from_pretrained_takes_a_hub_id_from_the_local_cache_offline(tmp_path: Path) -> None:
    import sys

    sys.path.insert(0, str(Path(__file__).parent))
    from hub_standin import cache_snapshot

    from hsrl.models.image import ImageEncoder

    model = resnet18(in_channels=3, image_size=32, dim=8, hidden_dim=16).eval()
    save(model, tmp_path / "model")
    cache_snapshot(tmp_path / "cache", "someone/tiny-resnet", tmp_path / "model")
    opened = ImageEncoder.from_pretrained("someone/tiny-resnet", cache_dir=tmp_path / "cache", local_files_only=True)
    x = images(2, 3, 32)
    assert opened.architecture == "resnet18" and torch.equal(opened(x), model(x))


def test_small_resnet_taps_shapes_unit_output_and_folder_round_trip(tmp_path: Path) -> None:
    model = build_encoder("small_resnet", in_channels=1, image_size=28, dim=16, widths=(8, 16, 24), blocks=(1, 2, 1),
                          stem_stride=1)  # fmt: skip
    assert model.layers == ("stage1", "stage2", "stage3", "pool", "output")
    x = images(6, 1, 28)
    taps = model.forward_taps(x, ["stage1", "stage2", "stage3", "pool", "output"])
    assert taps["stage1"].shape == (6, 8, 28, 28) and taps["stage2"].shape == (6, 16, 14, 14)
    assert taps["stage3"].shape == (6, 24, 7, 7) and taps["pool"].shape == (6, 24)
    torch.testing.assert_close(taps["pool"], taps["stage3"].mean(dim=(2, 3)))
    torch.testing.assert_close(taps["output"].norm(dim=1), torch.ones(6))
    assert len(model.stages[1]) == 2  # blocks per stage
    with pytest.raises(ValueError, match="fc7"):
        model.forward_features(x, "fc7")
    model.train()
    model(images(8, 1, 28, seed=2))  # BatchNorm statistics move
    model.eval()
    restored = load(save(model, tmp_path / "model"))
    assert restored.architecture == "small_resnet" and restored.config["widths"] == [8, 16, 24]
    torch.testing.assert_close(restored(x), model(x), rtol=0, atol=0)
    assert headline_layers("small_resnet", ["stage2", "output"]) == ("stage2", "stage2")
    halved = build_encoder("small_resnet", in_channels=1, image_size=28, widths=(8, 16, 24))  # stem stride 2
    assert halved.forward_features(x, "stage3").shape == (6, 24, 4, 4)
    with pytest.raises(ValueError, match="one width"):
        build_encoder("small_resnet", widths=(8, 16), blocks=(1,))


def test_small_resnet_head_on_a_grid_sees_the_layout_and_round_trips(tmp_path: Path) -> None:
    """head_grid g: the head reads the last map average-pooled to g x g and flattened (C·g² inputs), so two
    images whose last maps have the same global average but another layout get different outputs."""
    model = build_encoder("small_resnet", in_channels=1, image_size=28, dim=16, widths=(8, 16, 24), head_grid=2)
    model.eval()
    assert model.head[0].in_features == 24 * 4 and model.config["head_grid"] == 2
    x = images(5, 1, 28)
    taps = model.forward_taps(x, ["stage3", "pool", "output"])
    grid = F.adaptive_avg_pool2d(taps["stage3"], 2).flatten(1)
    torch.testing.assert_close(taps["output"], F.normalize(model.head(grid), dim=1))
    torch.testing.assert_close(taps["pool"], taps["stage3"].mean(dim=(2, 3)))  # the pool tap is unchanged
    # A head on the global average cannot tell a map from its mirror image; a 2 x 2 grid can.
    mirrored = taps["stage3"].flip(-1)
    pooled_head = build_encoder("small_resnet", in_channels=1, image_size=28, dim=16, widths=(8, 16, 24)).eval()
    same = pooled_head.head(mirrored.mean(dim=(2, 3))), pooled_head.head(taps["stage3"].mean(dim=(2, 3)))
    torch.testing.assert_close(*same)
    assert not torch.allclose(model.head(F.adaptive_avg_pool2d(mirrored, 2).flatten(1)), model.head(grid))
    restored = load(save(model, tmp_path / "model"))
    assert restored.config["head_grid"] == 2
    torch.testing.assert_close(restored(x), model(x), rtol=0, atol=0)
    with pytest.raises(ValueError, match="head_grid"):
        build_encoder("small_resnet", head_grid=0)
