"""Linear probe and k-NN on toy data with known answers; the image evaluation report and its CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from hsrl.cli.eval_image import cli_main
from hsrl.evaluation.image import (
    evaluate_image_encoder,
    format_report,
    image_summary,
    summary_metrics,
)
from hsrl.evaluation.knn import KNN_PROTOCOLS, knn_classify, knn_predict, knn_vote
from hsrl.evaluation.linear import LinearProbeConfig, linear_probe
from hsrl.evaluation.summary import format_summary
from hsrl.models.image import save, small_alexnet

FASHION = Path("/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz")
needs_fashion = pytest.mark.skipif(not FASHION.is_file(), reason="dataset-fashion-mnist absent")


def blobs(n: int, classes: int, dim: int, spread: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    centres = torch.eye(dim)[:classes] * 4
    labels = torch.arange(n) % classes
    return centres[labels] + spread * torch.randn(n, dim, generator=g), labels


def test_linear_probe_separates_separable_data_and_not_noise() -> None:
    x, y = blobs(300, 4, 16, 0.5, seed=0)
    xt, yt = blobs(100, 4, 16, 0.5, seed=1)
    result = linear_probe(x, y, xt, yt, LinearProbeConfig.fast(epochs=10))
    assert result.test_accuracy == 1.0 and result.train_accuracy == 1.0
    assert result.classifier.out_features == 4
    noise = torch.randn(400, 16, generator=torch.Generator().manual_seed(2))
    labels = torch.randint(0, 2, (400,), generator=torch.Generator().manual_seed(3))
    chance = linear_probe(noise[:300], labels[:300], noise[300:], labels[300:], LinearProbeConfig.fast(epochs=5))
    assert 0.3 < chance.test_accuracy < 0.7  # nothing to learn: about chance


def test_linear_probe_paper_protocol_and_its_schedule() -> None:
    paper = LinearProbeConfig.paper()
    assert (paper.epochs, paper.lr, paper.betas, paper.batch_size, paper.gamma) == (100, 1e-3, (0.5, 0.999), 128, 0.2)
    assert [round(m * paper.epochs) for m in paper.milestones] == [60, 80]
    x, y = blobs(64, 2, 4, 0.3, seed=0)
    a = linear_probe(x, y, x, y, LinearProbeConfig.fast(epochs=3, seed=7))
    b = linear_probe(x, y, x, y, LinearProbeConfig.fast(epochs=3, seed=7))
    assert torch.equal(a.classifier.weight, b.classifier.weight)  # seeded: repeatable
    with pytest.raises(ValueError, match="class indices"):
        linear_probe(x, -torch.ones(64, dtype=torch.long), x, y)


def test_knn_known_answer_on_the_circle() -> None:
    # Training points at angles 0..350 degrees in steps of 10; class = quadrant (0-3).
    angles = torch.deg2rad(torch.arange(0, 360, 10).float())
    train = torch.stack([angles.cos(), angles.sin()], 1)
    labels = (torch.arange(0, 360, 10) // 90).long()
    queries = torch.tensor([[1.0, 0.2], [-1.0, 0.1], [0.1, -1.0], [0.7, 0.7]])  # angles ~11, ~174, ~276, 45
    expected = torch.tensor([0, 1, 3, 0])
    for backend in ("torch", "auto"):
        predicted, used = knn_classify(train * 3, labels, queries, k=5, backend=backend)  # scale must not matter
        assert torch.equal(predicted, expected), used


def test_lightly_protocol_weights_votes_by_exp_similarity_over_temperature() -> None:
    # One query at angle 0. Neighbours: two of class 1 at +-60 degrees (cos 0.5), one of class 0 at 0 (cos 1).
    # Majority (2 against 1) says class 1; weighted, class 0 gets e^(1/0.1) = e^10 against 2 e^5: class 0.
    angles = torch.deg2rad(torch.tensor([0.0, 60.0, -60.0, 180.0]))
    train = torch.stack([angles.cos(), angles.sin()], 1)
    labels = torch.tensor([0, 1, 1, 2])
    query = torch.tensor([[1.0, 0.0]])
    for backend in ("torch", "auto"):
        assert knn_classify(train, labels, query, k=3, backend=backend)[0].tolist() == [1]
        assert knn_classify(train, labels, query, k=3, backend=backend, temperature=0.1)[0].tolist() == [0]
    # At a high temperature the weights even out and the majority wins again: 2 e^(0.5/10) > e^(1/10).
    assert knn_predict(train, labels, query, k=3, temperature=10.0).tolist() == [1]
    # Hand-computed weighted votes: class 0 has e^(1/0.1), class 1 has 2 e^(0.5/0.1) (class 0 wins), but with
    # similarities 0.3 against two of 0.25, class 1's 2 e^2.5 beats class 0's e^3 (24.4 against 20.1).
    assert knn_vote(torch.tensor([[0, 1, 1]]), torch.tensor([[1.0, 0.5, 0.5]]), 3, 0.1).tolist() == [0]
    assert knn_vote(torch.tensor([[0, 1, 1]]), torch.tensor([[0.3, 0.25, 0.25]]), 3, 0.1).tolist() == [1]
    assert KNN_PROTOCOLS["lightly"].k == 200 and KNN_PROTOCOLS["lightly"].temperature == 0.1
    assert KNN_PROTOCOLS["lightly"].metric == "knn200_t0.1" and KNN_PROTOCOLS["paper"].metric == "knn5"
    with pytest.raises(ValueError, match="temperature"):
        knn_predict(train, labels, query, k=3, temperature=0.0)


def test_knn_backends_agree_on_clusters() -> None:
    pytest.importorskip("hsrl.index")
    x, y = blobs(200, 5, 8, 1.0, seed=0)
    q, qy = blobs(50, 5, 8, 1.0, seed=1)
    by_torch, _ = knn_classify(x, y, q, k=5, backend="torch")
    by_index, used = knn_classify(x, y, q, k=5, backend="index")
    assert used == "index" and torch.equal(by_torch, by_index) and (by_index == qy).float().mean() > 0.9
    zeros = torch.zeros_like(q)
    assert knn_classify(x, y, zeros, k=5)[1] == "torch"  # zero rows: exact torch search


@needs_fashion
def test_report_has_the_model_a_random_encoder_and_raw_pixels() -> None:
    torch.manual_seed(1)  # the report's random encoder is seeded with 0
    model = small_alexnet(in_channels=1, image_size=28, width=0.1, fc_dim=320, dim=16, mean=(0.286,), std=(0.353,))
    report = evaluate_image_encoder(
        model, "fashion-mnist", train_size=300, test_size=100, pairs=64, linear=LinearProbeConfig.fast(epochs=3)
    )
    assert report["layers"] == ["fc7", "output"] and report["train_images"] == 300 and report["test_images"] == 100
    results = report["results"]
    assert set(results) == {"pretrained", "random_encoder", "raw_pixels"}
    assert 0.5 < results["raw_pixels"]["pixels"]["knn5"] <= 1  # raw-pixel k-NN is strong on Fashion-MNIST
    for role in ("pretrained", "random_encoder"):
        assert set(results[role]) == {"fc7", "output", "alignment", "uniformity"}
        assert 0.2 < results[role]["fc7"]["linear"] <= 1 and 0 <= results[role]["alignment"] <= 4
        assert -4 <= results[role]["uniformity"] < 0
    # The "pretrained" model here is itself untrained with another seed: the two encoders differ.
    assert results["pretrained"]["alignment"] != results["random_encoder"]["alignment"]
    assert "raw_pixels/pixels/knn5" in summary_metrics(report)
    summary = image_summary(report, layer="output", linear_layer="fc7", steps=7, train_seconds=1.25)
    assert summary["layer"] == "output" and summary["knn5"] == results["pretrained"]["output"]["knn5"]
    assert summary["linear"] == results["pretrained"]["fc7"]["linear"] and summary["linear_layer"] == "fc7"
    assert summary["raw_pixels_knn5"] == results["raw_pixels"]["pixels"]["knn5"]
    assert summary["random_encoder_knn5"] == results["random_encoder"]["output"]["knn5"]
    assert summary["output_knn5"] == summary["knn5"] and summary["steps"] == 7 and summary["train_seconds"] == 1.2
    assert summary["align"] == results["pretrained"]["alignment"]
    table = format_summary(summary)
    assert "| summary | random encoder | raw pixels | trained | change |" in table
    assert f"| knn5 | {summary['random_encoder_knn5']:.4f} | {summary['raw_pixels_knn5']:.4f} | " in table
    assert "random_encoder   fc7" in format_report(report)


@needs_fashion
def test_cli_writes_a_report_and_fails_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")  # a missing torchvision dataset must not try the network
    model = small_alexnet(in_channels=1, image_size=28, width=0.1, fc_dim=320, dim=16)
    save(model, tmp_path / "grey")
    out = tmp_path / "report.json"
    args = ["--dataset", "fashion-mnist", "--train-size", "200", "--test-size", "50", "--linear-epochs", "2"]
    assert cli_main(["--model", str(tmp_path / "grey"), *args, "--layer", "conv5", "--output", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["layers"] == ["conv5"] and report["linear_probe"]["epochs"] == 2
    assert "pretrained       conv5" in capsys.readouterr().out

    save(small_alexnet(in_channels=3, image_size=28, width=0.1, fc_dim=320), tmp_path / "colour")
    assert cli_main(["--model", str(tmp_path / "colour"), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "takes colour (3 channels) images but fashion-mnist" in err
    assert cli_main(["--model", str(tmp_path / "missing"), *args]) == 2
    assert "missing: no such folder" in capsys.readouterr().err
    assert cli_main(["--model", str(tmp_path / "grey"), "--dataset", "cifar10", "--data-root", str(tmp_path)]) == 2
    assert "cifar10 is not in" in capsys.readouterr().err
