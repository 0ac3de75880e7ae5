"""Tests of MedFusionLib.evaluation.scoring, MedFusionLib.evaluation.report and `medfusion evaluate`.

Always-run tests build a small Harvard-like folder of synthetic PNG pairs (gray MRI, gray CT,
colour PET) and a small head phantom volume; one test reads the real data when present.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from PIL import Image

from MedFusionLib.cli import main
from MedFusionLib.core.errors import InputError, WeightsNotAvailableError
from MedFusionLib.datasets import harvard
from MedFusionLib.evaluation import figures, metrics, report
from MedFusionLib.evaluation import scoring as evaluation
from MedFusionLib.imaging.colour import rgb_to_ycbcr, ycbcr_to_rgb
from MedFusionLib.imaging.phantom import make_head_phantom
from MedFusionLib.models import create_model, list_models, model_spec

SIZE = 64


def _synthetic_mri(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:SIZE, 0:SIZE] / (SIZE - 1) * 2 - 1
    head = np.hypot(x, y) < 0.8
    tissue = 90 + 70 * np.sin(5 * x + seed) * np.cos(4 * y)
    return np.clip(np.where(head, tissue + rng.normal(0, 4, (SIZE, SIZE)), 0), 0, 255).astype(np.uint8)


def _synthetic_ct(seed: int) -> np.ndarray:
    y, x = np.mgrid[0:SIZE, 0:SIZE] / (SIZE - 1) * 2 - 1
    radius = np.hypot(x - 0.02 * seed, y)
    return np.where(radius < 0.8, np.where(radius > 0.68, 250, 50), 0).astype(np.uint8)


def _synthetic_pet(seed: int) -> np.ndarray:
    y, x = np.mgrid[0:SIZE, 0:SIZE] / (SIZE - 1) * 2 - 1
    uptake = np.exp(-((x - 0.3) ** 2 + (y + 0.1 * seed) ** 2) / 0.1) * (np.hypot(x, y) < 0.8)
    rgb = np.stack([255 * uptake, 200 * uptake**2, 60 * (1 - uptake) * (uptake > 0.05)], axis=-1)
    return np.clip(rgb, 0, 255).astype(np.uint8)


@pytest.fixture()
def harvard_like(tmp_path: Path) -> Path:
    """pairs.csv with 2 val + 1 train CT-MRI pairs and 2 val PET-MRI pairs (ids repeat across tasks)."""
    root = tmp_path / "harvard"
    rows = [("CT-MRI", "CT", "1001", "1", "val"), ("CT-MRI", "CT", "1002", "1", "val")]
    rows += [("CT-MRI", "CT", "2001", "2", "train")]
    rows += [("PET-MRI", "PET", "1001", "1", "val"), ("PET-MRI", "PET", "1002", "1", "val")]
    for seed, (task, modality, pair_id, _, _) in enumerate(rows):
        for folder in ("MRI", modality):
            (root / task / folder).mkdir(parents=True, exist_ok=True)
        Image.fromarray(_synthetic_mri(seed)).save(root / task / "MRI" / f"{pair_id}.png")
        other = _synthetic_ct(seed) if modality == "CT" else _synthetic_pet(seed)
        Image.fromarray(other).save(root / task / modality / f"{pair_id}.png")
    with open(root / "pairs.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["task", "other_modality", "id", "case", "split"])
        writer.writerows(rows)
    return root


def _model_without_weights() -> str:
    for name in list_models():
        if model_spec(name).learned:
            try:
                create_model(name)
            except WeightsNotAvailableError:
                return name
    pytest.skip("every learned model has shipped weights")


# ----------------------------------------------------------------------------- Harvard pairs


def test_load_harvard_pairs_selects_task_and_split(harvard_like):
    pairs = harvard.load_harvard_pairs(harvard_like, ["CT-MRI"], "val")
    assert [(p.task, p.pair_id) for p in pairs] == [("CT-MRI", "1001"), ("CT-MRI", "1002")]
    assert pairs[0].mri_path == harvard_like / "CT-MRI" / "MRI" / "1001.png"
    assert len(harvard.load_harvard_pairs(harvard_like, list(harvard.HARVARD_TASKS), "val")) == 4


@pytest.mark.parametrize(
    ("tasks", "split", "message"),
    [(["MR-CT"], "val", "unknown task"), (["CT-MRI"], "test", "unknown split"), (["SPECT-MRI"], "val", "no val pairs")],
)
def test_load_harvard_pairs_rejects_bad_selections(harvard_like, tasks, split, message):
    with pytest.raises(InputError, match=message):
        harvard.load_harvard_pairs(harvard_like, tasks, split)


def test_load_harvard_pairs_names_a_missing_image(harvard_like, tmp_path):
    (harvard_like / "CT-MRI" / "CT" / "1002.png").unlink()
    with pytest.raises(InputError, match="1002.png is listed"):
        harvard.load_harvard_pairs(harvard_like, ["CT-MRI"], "val")
    with pytest.raises(InputError, match="pairs.csv not found"):
        harvard.load_harvard_pairs(tmp_path / "nowhere", ["CT-MRI"], "val")


def test_colour_sources_are_scored_on_their_rounded_luminance(harvard_like):
    pair = harvard.load_harvard_pairs(harvard_like, ["PET-MRI"], "val")[0]
    images = harvard.load_pair_images(pair)
    rgb = np.asarray(Image.open(pair.other_path))
    np.testing.assert_array_equal(images.other_rgb, rgb)
    np.testing.assert_array_equal(images.source_b, np.clip(np.round(rgb_to_ycbcr(rgb)[..., 0]), 0, 255))
    assert images.source_a.dtype == np.float64 and images.source_a.shape == (SIZE, SIZE)


def test_evaluate_pairs_scores_models_and_single_source_references(harvard_like):
    pairs = harvard.load_harvard_pairs(harvard_like, ["CT-MRI", "PET-MRI"], "val")
    methods, skipped = evaluation.build_model_methods(["average", "maximum"], "cpu")
    assert skipped == {}
    result = evaluation.evaluate_pairs(pairs, methods, examples_per_task=1)
    assert len(result.rows) == len(pairs) * 4
    assert result.reference_methods == list(evaluation.REFERENCE_METHODS)
    for row in result.rows:
        images = harvard.load_pair_images(next(p for p in pairs if (p.task, p.pair_id) == (row.task, row.pair_id)))
        a, b = images.source_a, images.source_b
        expected_fused = {
            # The model computes in float32; ties round the way float32 sums fall.
            "average": metrics.to_eight_bit(((a / 255).astype(np.float32) + (b / 255).astype(np.float32)) * 0.5),
            "maximum": np.maximum(a, b),
            evaluation.REFERENCE_A: a,
            evaluation.REFERENCE_B: b,
        }[row.method]
        assert row.scores == pytest.approx(metrics.score(expected_fused, a, b), rel=1e-12)
        assert (row.seconds is None) == (row.method in evaluation.REFERENCE_METHODS)
    assert [len(result.examples[task]) for task in result.tasks] == [1, 1]
    assert set(result.examples["CT-MRI"][0].fused) == {"average", "maximum"}
    summary = result.summary("CT-MRI")
    averages = [r.scores["SSIM"] for r in result.rows if r.task == "CT-MRI" and r.method == "average"]
    assert summary["average"]["SSIM"] == pytest.approx((np.mean(averages), np.std(averages)))


def test_learned_models_without_weights_are_skipped_with_the_reason():
    name = _model_without_weights()
    methods, skipped = evaluation.build_model_methods([name, "average"], "cpu")
    assert [m.name for m in methods] == ["average"]
    assert "weights" in skipped[name]


def test_saved_fused_pngs_score_exactly_like_the_model_run_in_process(harvard_like, tmp_path):
    pairs = harvard.load_harvard_pairs(harvard_like, ["CT-MRI", "PET-MRI"], "val")
    methods, _ = evaluation.build_model_methods(["laplacian"], "cpu")
    in_process = evaluation.evaluate_pairs(pairs, methods, include_references=False)
    fused_dir = tmp_path / "laplacian_outputs"
    model = create_model("laplacian")
    for pair in pairs:
        images = harvard.load_pair_images(pair)
        fused = evaluation.ModelMethod("laplacian", model, methods[0].device).fuse(images)
        (fused_dir / pair.task).mkdir(parents=True, exist_ok=True)
        if images.other_rgb is None:
            Image.fromarray(fused.astype(np.uint8)).save(fused_dir / pair.task / f"{pair.pair_id}.png")
        else:  # saved in colour, as a user would: scored again on its Y channel
            ycbcr = rgb_to_ycbcr(images.other_rgb)
            ycbcr[..., 0] = fused
            rgb = np.clip(np.round(ycbcr_to_rgb(ycbcr)), 0, 255).astype(np.uint8)
            Image.fromarray(rgb).save(fused_dir / pair.task / f"{pair.pair_id}.png")
    from_disk = evaluation.evaluate_pairs(
        pairs, [evaluation.FusedDirectoryMethod("laplacian", fused_dir, single_task=False)], include_references=False
    )
    for ours, theirs in zip(in_process.rows, from_disk.rows):
        if ours.task == "CT-MRI":
            assert theirs.scores == pytest.approx(ours.scores, rel=1e-12)
        else:  # the colour round trip moves Y by at most a level or two
            assert theirs.scores["SSIM"] == pytest.approx(ours.scores["SSIM"], abs=0.02)


def test_a_missing_fused_image_is_an_error_naming_the_file(harvard_like, tmp_path):
    pairs = harvard.load_harvard_pairs(harvard_like, ["CT-MRI"], "val")
    (tmp_path / "outputs" / "CT-MRI").mkdir(parents=True)
    method = evaluation.FusedDirectoryMethod("outputs", tmp_path / "outputs", single_task=True)
    with pytest.raises(InputError, match=r"no fused image for CT-MRI/1001.*1001.png"):
        evaluation.evaluate_pairs(pairs, [method])


# ----------------------------------------------------------------------------- report


def _hand_made_evaluation() -> evaluation.Evaluation:
    def row(method: str, value: float) -> evaluation.PairScore:
        return evaluation.PairScore("CT-MRI", "1", "1", method, {"EN": value, "VIF": 2 - value}, 0.01)

    return evaluation.Evaluation(
        split="val",
        tasks=["CT-MRI"],
        methods=["good", "bad"],
        reference_methods=[evaluation.REFERENCE_A],
        metric_names=["EN", "VIF"],
        rows=[row("good", 1.5), row("bad", 0.5), row(evaluation.REFERENCE_A, 0.2)],
        skipped={"emfusion": "no weights"},
        examples={"CT-MRI": []},
        device="cpu",
    )


def test_markdown_table_marks_the_best_fusion_method_and_references_that_beat_it():
    table = report.markdown_table(_hand_made_evaluation(), "CT-MRI").splitlines()
    assert table[0] == "| method | EN ↑ | VIF ↑ | ms/pair |"
    assert table[2] == "| good | **1.500 ± 0.000** | 0.500 ± 0.000 | 10.0 |"
    assert table[3] == "| bad | 0.500 ± 0.000 | **1.500 ± 0.000** | 10.0 |"
    reference_row = f"| A only (MRI), reference | 0.200 ± 0.000 | 1.800 ± 0.000 {report.REFERENCE_MARK} | 10.0 |"
    assert table[4] == reference_row
    summary = report.markdown_summary(_hand_made_evaluation())
    assert "- `emfusion`: no weights" in summary


def test_cli_evaluate_writes_csv_markdown_figures_and_a_self_contained_report(harvard_like, tmp_path, capsys):
    skipped_model = _model_without_weights()
    out, page = tmp_path / "out", tmp_path / "report.html"
    argv = ["evaluate", "--data", str(harvard_like), "--task", "all", "--split", "val"]
    argv += ["--models", f"{skipped_model},average,maximum", "--out", str(out), "--report", str(page), "--quiet"]
    assert main(argv) == 0
    assert sorted(p.name for p in out.iterdir()) == [
        "examples_CT-MRI.png",
        "examples_PET-MRI.png",
        "scores.csv",
        "summary.md",
    ]
    with open(out / "scores.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 4 * 4 and {r["method"] for r in rows} == {"average", "maximum", *evaluation.REFERENCE_METHODS}
    assert all(math.isfinite(float(r["Qabf"])) for r in rows)
    text = page.read_text(encoding="utf-8")
    assert text.count("<table>") == 3  # two tasks + the metric conventions
    assert text.count("src='data:image/png;base64,") == 2 and "http" not in text.replace("http-equiv", "")
    assert skipped_model in text and "Metrics are not quality" in text
    figure = Image.open(out / "examples_PET-MRI.png")
    assert figure.width == figures.TILE * 4  # A, B, average, maximum

    assert main(argv) == 2  # the output exists: refused, not overwritten
    assert "already exists" in capsys.readouterr().err
    assert main([*argv, "--overwrite"]) == 0


def test_cli_evaluate_scores_a_fused_directory_and_rejects_unknown_models(harvard_like, tmp_path, capsys):
    fused = tmp_path / "theirs"
    (fused / "CT-MRI").mkdir(parents=True)
    for pair in harvard.load_harvard_pairs(harvard_like, ["CT-MRI"], "val"):
        Image.fromarray(_synthetic_mri(7)).save(fused / pair.task / f"{pair.pair_id}.png")
    out = tmp_path / "out"
    assert main(["evaluate", "--data", str(harvard_like), "--task", "CT-MRI", "--fused", f"theirs={fused}", "--out",
                 str(out), "--quiet"]) == 0
    with open(out / "scores.csv", newline="") as handle:
        methods = {row["method"] for row in csv.DictReader(handle)}
    assert methods == {"theirs", *evaluation.REFERENCE_METHODS}
    assert main(["evaluate", "--data", str(harvard_like), "--models", "nonesuch", "--out", str(tmp_path / "x")]) == 2
    assert "unknown model 'nonesuch'" in capsys.readouterr().err


# ----------------------------------------------------------------------------- volumes


@pytest.fixture(scope="module")
def phantom_sources() -> tuple[sitk.Image, sitk.Image]:
    phantom = make_head_phantom(size=(48, 56, 72), spacing=(3.0, 3.0, 3.5))
    return phantom.mr, phantom.ct


def _normalised(image: sitk.Image) -> np.ndarray:
    from MedFusionLib.imaging.normalization import normalize_intensity

    return normalize_intensity(sitk.GetArrayFromImage(image)).astype(np.float64)


def test_volume_metrics_average_foreground_slices_and_slicewise_average_does_not_flicker(phantom_sources):
    mr, ct = phantom_sources
    a, b = _normalised(mr), _normalised(ct)
    fused = sitk.GetImageFromArray((a + b) / 2)
    fused.CopyInformation(ct)
    result = evaluation.evaluate_volume(fused, mr, ct)
    a8, b8, f8 = (metrics.to_eight_bit(v) for v in (a, b, (a + b) / 2))
    foreground = metrics.foreground_slices(a8, b8)
    assert 0 < foreground.size < a8.shape[0]  # the phantom has air slices above and below the head
    expected_ssim = np.mean([metrics.ssim(f8[i], a8[i], b8[i]) for i in foreground])
    assert result.scores["SSIM"] == pytest.approx(expected_ssim, rel=1e-12)
    expected_entropy = np.mean([metrics.entropy(f8[i]) for i in foreground])  # the sources' slices
    assert result.scores["EN"] == pytest.approx(expected_entropy, rel=1e-12)
    assert result.worst_flicker <= 1.0 + 1e-9
    assert result.spacing == (3.5, 3.0, 3.0)


def test_a_striped_slice_shows_up_as_flicker(phantom_sources):
    mr, ct = phantom_sources
    a, b = _normalised(mr), _normalised(ct)
    fused = (a + b) / 2
    middle = fused.shape[0] // 2
    fused[middle] *= 0.5  # one slice fused differently, as a per-slice normalisation would do
    result = evaluation.evaluate_volume(fused, a, b, normalize_sources=False)
    assert result.flicker_ratio[middle - 1] > 1.5 and result.flicker_ratio[middle] > 1.5
    others = np.delete(result.flicker_ratio, [middle - 1, middle])
    assert np.nanmax(others) <= 1.0 + 1e-9
    figure = figures.flicker_figure(result)
    assert figure.width > 560 and figure.height > 300


def test_volume_evaluation_rejects_unnormalised_or_mismatched_volumes(phantom_sources):
    mr, ct = phantom_sources
    with pytest.raises(InputError, match=r"expected \[0, 1\]"):
        evaluation.evaluate_volume(ct, mr, ct)  # a CT in HU is not a fused volume
    with pytest.raises(InputError, match="one grid"):
        evaluation.evaluate_volume(np.zeros((4, 8, 8)), np.zeros((4, 8, 9)), np.zeros((4, 8, 8)))


def test_cli_evaluate_volume_mode(phantom_sources, tmp_path):
    mr, ct = phantom_sources
    fused = sitk.GetImageFromArray(((_normalised(mr) + _normalised(ct)) / 2).astype(np.float32))
    fused.CopyInformation(ct)
    paths = {name: tmp_path / f"{name}.nii.gz" for name in ("fused", "mr", "ct")}
    for name, image in (("fused", fused), ("mr", mr), ("ct", ct)):
        sitk.WriteImage(image, str(paths[name]))
    out, page = tmp_path / "volume", tmp_path / "volume.html"
    argv = ["evaluate", "--fused-volume", str(paths["fused"]), "--source-a", str(paths["mr"]), "--source-b",
            str(paths["ct"])]
    assert main([*argv, "--out", str(out), "--report", str(page), "--quiet"]) == 0
    with open(out / "volume_scores.csv", newline="") as handle:
        values = dict(csv.reader(handle))
    assert float(values["flicker_worst"]) <= 1.0 + 1e-6 and 0.5 < float(values["SSIM"]) <= 2.0
    assert (out / "flicker.png").is_file() and "data:image/png;base64," in page.read_text(encoding="utf-8")


# ----------------------------------------------------------------------------- real data


def test_real_harvard_val_split_sizes_and_one_scored_pair(shared_data):
    folder = shared_data / "harvard"
    counts = {task: len(harvard.load_harvard_pairs(folder, [task], "val")) for task in harvard.HARVARD_TASKS}
    assert counts == {"CT-MRI": 20, "PET-MRI": 82, "SPECT-MRI": 33}
    pair = harvard.load_harvard_pairs(folder, ["PET-MRI"], "val")[0]
    methods, _ = evaluation.build_model_methods(["average"], "cpu")
    result = evaluation.evaluate_pairs([pair], methods)
    scores = result.summary("PET-MRI")
    # Averaging halves each source's contrast: it cannot keep more edge information than a source.
    assert 0 < scores["average"]["Qabf"][0] < metrics.QABF_MAX
    assert scores[evaluation.REFERENCE_A]["VIF"][0] > 1.0  # VIF(A -> A) = 1, plus B's share


def test_comma_separated_names_are_checked_against_their_choices():
    import argparse

    from MedFusionLib.cli.arguments import comma_separated

    parse = comma_separated("metric", ["EN", "SD"])
    assert parse(" EN, SD ,") == ["EN", "SD"]
    with pytest.raises(argparse.ArgumentTypeError, match="unknown metric MI; choose from EN, SD"):
        parse("EN,MI")
    with pytest.raises(argparse.ArgumentTypeError, match="at least one metric"):
        parse(" , ")
    assert comma_separated("model")("anything,else") == ["anything", "else"]  # checked later by the registry
