"""``hsrl reproduce``: every experiment's --quick mode, the files it writes, and the facts its numbers must obey.

All five quick experiments run once (module fixture, about a minute on two cores); the tests then read
their outputs. They assert structure and mathematics (histograms count every pair, 2-D features are unit
vectors, the Theorem 1 deviation shrinks with M, mean ± std match the per-seed numbers), never which
objective wins.
"""

from __future__ import annotations

import csv
import itertools
import json
import math
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from matplotlib.image import imread
from model_folders import opens_everywhere

from hsrl.cli import main as hsrl_main
from hsrl.cli.reproduce import cli_main
from hsrl.losses import HypersphereLoss, contrastive_loss
from hsrl.reproduce import EXPERIMENTS, common, fig3, fig5, fig8, table, text_table, theorem1
from hsrl.reproduce.common import EvalSizes, ImageBudget, RunSpec

#: experiment -> (its figure, {csv file: its exact header})
OUTPUTS: dict[str, tuple[str, dict[str, list[str]]]] = {
    "multimodal": (
        "multimodal.png",
        {"multimodal.csv": ["model", "align", "uniform_image", "uniform_text", "modality_gap", "mean_pair_distance"]},
    ),
    "fig3": (
        "fig3.png",
        {
            "fig3_summary.csv": [
                "encoder",
                "objective",
                "knn5_accuracy",
                "alignment",
                "uniformity",
                "mean_distance",
                "num_pairs",
                "max_norm_error",
            ],
            "fig3_histograms.csv": ["encoder", "bin_low", "bin_high", "count", "density"],
            "fig3_angle_density.csv": ["encoder", "angle", "density"],
        },
    ),
    "fig5": (
        "fig5.png",
        {"fig5_sweep.csv": fig5.COLUMNS, "fig5_spearman.csv": fig5.SPEARMAN_COLUMNS},
    ),
    "fig8": ("fig8.png", {"fig8_trajectories.csv": fig8.COLUMNS}),
    "theorem1": (
        "theorem1.png",
        {
            "theorem1.csv": theorem1.COLUMNS,
            "theorem1_slopes.csv": ["tau", "slope_abs_bias", "slope_mean_abs_deviation", "fit_from_M"],
        },
    ),
    "table": (
        "table.png",
        {
            "table.csv": table.SUMMARY_COLUMNS,
            "table_per_seed.csv": ["encoder", "objective", "seed", *table.METRICS, *table.OPTIONAL_METRICS],
        },
    ),
}


def read_csv(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with open(path, newline="") as handle:
        reader = csv.DictReader(handle)
        return list(reader.fieldnames or []), list(reader)


@pytest.fixture(scope="module")
def quick_outputs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """All five experiments in --quick mode, into one folder (``OUT/<experiment>``), removed after the module.

    The quick runs' models and checkpoints take ~2 GB; keeping them to the session's end would double the suite's
    peak disk use.
    """
    out = tmp_path_factory.mktemp("reproduce")
    started = time.perf_counter()
    assert cli_main(["all", "--quick", "--output-dir", str(out), "--device", "cpu"]) == 0
    (out / "seconds.txt").write_text(f"{time.perf_counter() - started:.1f}\n")
    yield out
    shutil.rmtree(out, ignore_errors=True)


# --------------------------------------------------------------------------- structure


@pytest.mark.parametrize("experiment", list(EXPERIMENTS))
def test_quick_run_writes_png_csv_and_report(quick_outputs: Path, experiment: str) -> None:
    folder = quick_outputs / experiment
    png, csvs = OUTPUTS[experiment]
    image = imread(folder / png)
    assert image.ndim == 3 and image.shape[0] > 200 and image.shape[1] > 200
    assert image[..., :3].std() > 0.01  # something is drawn, not a blank canvas
    for name, header in csvs.items():
        columns, rows = read_csv(folder / name)
        assert columns == header, name
        assert rows, f"{name} has no rows"
    report = (folder / "report.md").read_text()
    assert report.startswith("# ") and "Mode: quick" in report


def test_every_reproduce_model_folder_opens_with_export_serve_and_eval(quick_outputs: Path, tmp_path: Path) -> None:
    folders = sorted((quick_outputs / "table" / "runs").glob("*/model"))
    assert folders, "the image runs keep their model folders"
    assert opens_everywhere(folders[0], tmp_path) == "image"
    text = sorted((quick_outputs / "table" / "runs").glob("text-*/model"))
    assert text and opens_everywhere(text[0], tmp_path / "text") == "text"


# --------------------------------------------------------------------------- figure 3


def test_fig3_histograms_count_every_pair_and_features_are_unit_vectors(quick_outputs: Path) -> None:
    _, summary = read_csv(quick_outputs / "fig3" / "fig3_summary.csv")
    _, bins = read_csv(quick_outputs / "fig3" / "fig3_histograms.csv")
    assert [r["encoder"] for r in summary] == [name for name, _ in fig3.ENCODERS]
    for row in summary:
        counts = [int(b["count"]) for b in bins if b["encoder"] == row["encoder"]]
        assert sum(counts) == int(row["num_pairs"]) == fig3.QUICK.eval_sizes.queries
        assert float(row["max_norm_error"]) < 1e-5  # m = 2 features on the unit circle
        assert 0 <= float(row["mean_distance"]) <= 2  # unit vectors are at most 2 apart
        assert math.sqrt(float(row["alignment"])) >= float(row["mean_distance"]) - 1e-6  # Jensen: E d ≤ √(E d²)


def test_fig3_angle_density_is_a_density_over_the_circle(quick_outputs: Path) -> None:
    _, rows = read_csv(quick_outputs / "fig3" / "fig3_angle_density.csv")
    for encoder in {r["encoder"] for r in rows}:
        grid = np.array([float(r["angle"]) for r in rows if r["encoder"] == encoder])
        density = np.array([float(r["density"]) for r in rows if r["encoder"] == encoder])
        assert grid[0] == pytest.approx(-math.pi) and grid[-1] == pytest.approx(math.pi)
        assert (density >= 0).all()
        assert np.trapezoid(density, grid) == pytest.approx(1.0, rel=1e-3)


# --------------------------------------------------------------------------- figure 5


def test_fig5_sweep_definition_has_at_least_16_distinct_valid_objectives() -> None:
    objectives = [p.objective for p in fig5.SWEEP]
    assert len(fig5.SWEEP) >= 16 and len(set(objectives)) == len(objectives)
    assert fig5.FULL.points == fig5.SWEEP
    families = {p.family for p in fig5.SWEEP}
    assert {"contrastive", "align+uniform"} <= families
    assert len({p.objective for p in fig5.SWEEP if p.family == "contrastive"}) >= 4  # a τ sweep
    for objective in objectives:
        HypersphereLoss(objective)  # each one parses


def test_fig5_quick_runs_a_subset_and_reports_spearman(quick_outputs: Path) -> None:
    _, rows = read_csv(quick_outputs / "fig5" / "fig5_sweep.csv")
    assert len(rows) == len(fig5.QUICK.points) < len(fig5.SWEEP)
    assert {r["objective"] for r in rows} <= {p.objective for p in fig5.SWEEP}
    _, correlations = read_csv(quick_outputs / "fig5" / "fig5_spearman.csv")
    assert [c["metric"] for c in correlations] == ["alignment", "uniformity"]
    for c in correlations:
        assert -1 <= float(c["spearman_rho"]) <= 1
    report = (quick_outputs / "fig5" / "report.md").read_text()
    assert "Spearman" in report and correlations[0]["spearman_rho"][:4] in report


def test_spearman_matches_the_rank_formula() -> None:
    values, accuracy = [0.3, 0.1, 0.2, 0.5], [0.6, 0.9, 0.7, 0.5]  # perfectly reversed ranks
    rho, _ = fig5.spearman(values, accuracy)
    assert rho == pytest.approx(-1.0)
    assert math.isnan(fig5.spearman([1.0, 1.0, 1.0], [0.1, 0.2, 0.3])[0])  # constant input: undefined, not an error


# --------------------------------------------------------------------------- figure 8


def test_fig8_trajectories_start_from_the_contrastive_encoder(quick_outputs: Path) -> None:
    _, rows = read_csv(quick_outputs / "fig8" / "fig8_trajectories.csv")
    settings = fig8.QUICK
    expected_steps = [*range(0, settings.fine_tune.steps, settings.eval_every), settings.fine_tune.steps]
    starts = []
    for label, _ in fig8.FINE_TUNES:
        points = [r for r in rows if r["fine_tune"] == label]
        assert [int(p["step"]) for p in points] == expected_steps
        starts.append(tuple(points[0][k] for k in ("knn5_accuracy", "alignment", "uniformity")))
    # Step 0 is the same starting encoder evaluated the same way, whatever the fine-tuning objective.
    assert len(set(starts)) == 1


# --------------------------------------------------------------------------- theorem 1


def test_theorem1_deviation_shrinks_with_m(quick_outputs: Path) -> None:
    _, rows = read_csv(quick_outputs / "theorem1" / "theorem1.csv")
    m = [int(r["M"]) for r in rows]
    assert m == list(theorem1.QUICK.grid) and m[0] == 1
    deviation = [float(r["mean_abs_deviation"]) for r in rows]
    assert all(b < a for a, b in itertools.pairwise(deviation))  # averaged over anchors and draws
    assert float(rows[-1]["abs_bias"]) < float(rows[0]["abs_bias"]) / 10
    limit = float(rows[0]["limit"])
    assert abs(float(rows[-1]["loss_minus_log_m"]) - limit) < abs(float(rows[0]["loss_minus_log_m"]) - limit)
    _, slopes = read_csv(quick_outputs / "theorem1" / "theorem1_slopes.csv")
    # Between −1 (the O(1/M) terms) and −1/2 (the theorem's rate), with a margin.
    assert -1.3 < float(slopes[0]["slope_mean_abs_deviation"]) < -0.4


def test_loss_minus_log_m_is_the_library_contrastive_loss() -> None:
    torch.manual_seed(0)
    x = F.normalize(torch.randn(20, 5, dtype=torch.float64), dim=1)
    y = F.normalize(x + 0.3 * torch.randn(20, 5, dtype=torch.float64), dim=1)
    negatives = F.normalize(torch.randn(64, 5, dtype=torch.float64), dim=1)
    values = theorem1.loss_minus_log_m(x, y, negatives, tau=0.3, grid=[1, 7, 64])
    for j, count in enumerate([1, 7, 64]):
        # Anchor y, positive x, the first M negatives: the library's loss with explicit negatives.
        expected = contrastive_loss(y, x, tau=0.3, negatives=negatives[:count]) - math.log(count)
        assert float(values[:, j].mean()) == pytest.approx(float(expected), rel=1e-10)


def test_limit_terms_are_the_exact_pool_expectation() -> None:
    torch.manual_seed(1)
    x = F.normalize(torch.randn(6, 3, dtype=torch.float64), dim=1)
    y = F.normalize(torch.randn(6, 3, dtype=torch.float64), dim=1)
    pool = F.normalize(torch.randn(50, 3, dtype=torch.float64), dim=1)
    tau = 0.5
    brute = -(x * y).sum(1) / tau + torch.log(torch.exp(y @ pool.T / tau).mean(dim=1))
    assert torch.allclose(theorem1.limit_terms(x, y, pool, tau), brute, rtol=1e-12)


def test_fit_slope_recovers_a_power_law() -> None:
    m = np.array([1.0, 2, 4, 8, 16, 32])
    assert theorem1.fit_slope(m, 3 * m**-0.5) == pytest.approx(-0.5)
    assert math.isnan(theorem1.fit_slope(m, np.zeros_like(m)))


def test_full_theorem1_grid_goes_from_1_to_16384() -> None:
    assert theorem1.FULL.grid[0] == 1 and theorem1.FULL.grid[-1] == 16384 and theorem1.FULL.draws >= 4


# --------------------------------------------------------------------------- table


def test_table_summary_is_mean_and_std_of_the_seeds(quick_outputs: Path) -> None:
    _, per_seed = read_csv(quick_outputs / "table" / "table_per_seed.csv")
    _, summary = read_csv(quick_outputs / "table" / "table.csv")
    assert len(table.FULL.seeds) >= 3
    for row in summary:
        if row["encoder"] == "raw pixels":
            assert 0 < float(row["knn5_accuracy_mean"]) <= 1
            continue
        accuracy = [float(r["knn5_accuracy"]) for r in per_seed if r["encoder"] == row["encoder"]]
        assert int(row["seeds"]) == len(accuracy) == len(table.QUICK.seeds)
        assert float(row["knn5_accuracy_mean"]) == pytest.approx(np.mean(accuracy), abs=1e-5)
        assert float(row["knn5_accuracy_std"]) == pytest.approx(np.std(accuracy, ddof=1), abs=1e-5)
    assert {"align+uniform", "contrastive"} <= {r["encoder"] for r in summary}


def test_table_text_half_runs_the_text_recipe_for_both_objectives_and_every_seed(quick_outputs: Path) -> None:
    folder = quick_outputs / "table"
    _, per_seed = read_csv(folder / "table_text_per_seed.csv")
    _, summary = read_csv(folder / "table_text.csv")
    assert len(text_table.FULL.seeds) >= 3
    expected = {(name, seed) for name, _ in text_table.TEXT_ENCODERS for seed in text_table.QUICK.seeds}
    assert {(r["encoder"], int(r["seed"])) for r in per_seed} == expected
    for row in summary:
        runs = [r for r in per_seed if r["encoder"] == row["encoder"]]
        if not runs:  # the untouched model, measured once
            assert row["encoder"].startswith("untouched") and int(row["seeds"]) == 1
            continue
        recall = [float(r["recall@10"]) for r in runs]
        assert all(0 <= value <= 1 for value in recall)
        assert float(row["recall@10_mean"]) == pytest.approx(np.mean(recall), abs=1e-6)
        assert float(row["recall@10_std"]) == pytest.approx(np.std(recall, ddof=1), abs=1e-6)
        assert all(float(r["uniform"]) < 0 for r in runs)  # log E exp(-t d²) of unit vectors is below 0
    # Each run is a real recipe run, its settings hashed into its folder, with the model it trained.
    runs_dir = folder / "runs"
    text_runs = sorted(runs_dir.glob("text-*"))
    assert len(text_runs) == len(expected)
    for run in text_runs:
        metrics = json.loads((run / "metrics.json").read_text())
        assert metrics["steps"] == text_table.QUICK.budget.steps
        assert (run / "model" / "modules.json").is_file()
    report = (folder / "report.md").read_text()
    assert "Text: results" in report and "recipes/bookcorpus.py" in report
    trained_before = len(common.TRAINED_RUNS)
    assert cli_main(["table", "--quick", "--output-dir", str(folder), "--device", "cpu"]) == 0
    assert len(common.TRAINED_RUNS) == trained_before  # finished text runs are read back, not retrained


# --------------------------------------------------------------------------- skipping and resuming


def test_second_invocation_skips_finished_runs(quick_outputs: Path) -> None:
    out = quick_outputs / "fig5"
    metrics = sorted((out / "runs").glob("*/metrics.json"))
    assert len(metrics) == len(fig5.QUICK.points)
    before = {p: p.stat().st_mtime_ns for p in metrics}
    trained_before = len(common.TRAINED_RUNS)
    png_before = (out / "fig5.png").stat().st_mtime_ns
    assert cli_main(["fig5", "--quick", "--output-dir", str(out), "--device", "cpu"]) == 0
    assert len(common.TRAINED_RUNS) == trained_before  # nothing retrained
    assert {p: p.stat().st_mtime_ns for p in metrics} == before
    assert (out / "fig5.png").stat().st_mtime_ns > png_before  # the figure is redrawn from the saved numbers


def test_interrupted_run_resumes_from_its_checkpoint(tmp_path: Path) -> None:
    """A run whose training finished but whose metrics.json is missing resumes: no step is repeated."""
    ctx = common.Context(
        tmp_path / "out", tmp_path / "runs", quick=True, device=torch.device("cpu"), log=lambda _: None
    )
    spec = RunSpec(
        "resume",
        "align:1 + uniform:1",
        ImageBudget(dim=8, width=4, steps=3, batch_size=32, pretrain_size=128),
        EvalSizes(100, 50),
    )
    first = common.train_run(spec, ctx)
    log = first.folder / "train_log.jsonl"
    steps_logged = log.read_text().count("\n")
    (first.folder / "metrics.json").unlink()  # as if killed after training, before writing the results
    second = common.train_run(spec, ctx)
    assert second.trained and second.metrics == pytest.approx(first.metrics)
    assert log.read_text().count("\n") == steps_logged  # resumed at the last step: nothing trained again
    assert json.loads((second.folder / "metrics.json").read_text())["metrics"] == pytest.approx(first.metrics)


def _five_nn(memory: torch.Tensor, memory_labels: torch.Tensor, queries: torch.Tensor, labels: torch.Tensor) -> float:
    """The paper's 5-NN by hand: cosine similarity, majority of the 5 nearest, ties to the smallest label."""
    similarity = F.normalize(queries, dim=1) @ F.normalize(memory, dim=1).T
    nearest = memory_labels[similarity.topk(5, dim=1).indices]
    votes = torch.stack([(nearest == c).sum(dim=1) for c in range(10)], dim=1)
    return float((votes.argmax(dim=1) == labels).float().mean())


def test_resnet_runs_report_5nn_at_stage2_and_at_the_output(tmp_path: Path) -> None:
    """Full-size figures train the preset's SmallResNet: knn5_accuracy is its stage2 map's 5-NN (flattened,
    cosine), output_knn5_accuracy the output's, and alignment/uniformity stay the output's."""
    ctx = common.Context(tmp_path / "out", tmp_path / "runs", quick=True, device=torch.device("cpu"), log=print)
    sizes = EvalSizes(300, 120)
    spec = RunSpec("resnet", "align:1 + uniform:1", ImageBudget(encoder="small_resnet", dim=16, steps=2,
                   batch_size=32, pretrain_size=128), sizes)  # fmt: skip
    outcome = common.train_run(spec, ctx)
    encoder = common.load_run_encoder(outcome.folder, spec.budget, torch.device("cpu")).eval()
    assert encoder.architecture == "small_resnet" and common.KNN_LAYER["small_resnet"] == "stage2"
    train, test = common.fashion_mnist()
    with torch.no_grad():
        memory = encoder.forward_taps(train.images[:300], ["stage2", "output"])
        queries = encoder.forward_taps(test.images[:120], ["stage2", "output"])
    stage2 = _five_nn(memory["stage2"].flatten(1), train.labels[:300], queries["stage2"].flatten(1), test.labels[:120])
    output = _five_nn(memory["output"], train.labels[:300], queries["output"], test.labels[:120])
    assert outcome.metrics["knn5_accuracy"] == pytest.approx(stage2, abs=1e-6)
    assert outcome.metrics["output_knn5_accuracy"] == pytest.approx(output, abs=1e-6)
    assert outcome.metrics["uniformity"] == pytest.approx(
        float(torch.log(torch.exp(-2 * torch.pdist(queries["output"]) ** 2).mean())), abs=1e-4
    )
    assert 0 < common.raw_pixel_knn5(sizes) < 1


def test_run_folder_changes_with_any_setting() -> None:
    base = RunSpec("r", "align:1", ImageBudget(steps=10), EvalSizes())
    assert base.key() == RunSpec("r", "align:1", ImageBudget(steps=10), EvalSizes()).key()
    assert base.key() != RunSpec("r", "align:1", ImageBudget(steps=11), EvalSizes()).key()
    assert base.key() != RunSpec("r", "align:1", ImageBudget(encoder="small_resnet", steps=10), EvalSizes()).key()
    assert base.key() != RunSpec("r", "align:1", ImageBudget(steps=10), EvalSizes(), seed=1).key()


# --------------------------------------------------------------------------- errors


def _one_line(capsys: pytest.CaptureFixture[str]) -> str:
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


def test_unknown_experiment_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert hsrl_main(["reproduce", "fig4"]) == 2
    assert "unknown experiment 'fig4'" in _one_line(capsys)


def test_bad_flag_and_bad_device_are_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["fig3", "--quik"]) == 2
    assert "--quik" in _one_line(capsys)
    assert cli_main(["fig3", "--device", "tpu"]) == 2
    assert "tpu" in _one_line(capsys)


def test_missing_fashion_mnist_is_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setenv("HSRL_FASHION_MNIST_DIR", str(empty))
    assert cli_main(["theorem1", "--quick", "--output-dir", str(tmp_path / "out")]) == 2
    line = _one_line(capsys)
    assert "Fashion-MNIST not found" in line and str(empty) in line
