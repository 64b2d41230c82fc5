"""evaluate.py, predict.py and compare.py end to end on small workdirs trained on the real data,
checked against independent recomputations from the files they write; image preprocessing."""

from __future__ import annotations

import csv
import io
import json
import math
import re
import shutil
import struct
import zlib
from pathlib import Path

import chex
import numpy as np
import pytest
from PIL import Image

from fmnist_jax import calibration, comparison, data, images, metrics, restore
from fmnist_jax.errors import CheckpointError, UserError
from subprocess_runs import ROOT, one_line_error, run, run_main

FIGURES = ("confusion_matrix.png", "confusion_matrix_normalized.png", "per_class_f1.png",
           "training_curves.png", "worst_mistakes.png", "probabilities.png")


def _ok(result):
    assert result.returncode == 0, result.stderr
    return result


@pytest.fixture(scope="module")
def workdirs(tiny_workdir) -> dict[str, Path]:
    """The shared single-seed and two-seed mlp workdirs."""
    return {"single": tiny_workdir(1), "pair": tiny_workdir(2)}


@pytest.fixture(scope="module")
def evaluated(workdirs) -> dict[str, tuple[Path, str]]:
    """The single workdir evaluated on the test split, the pair on the validation split (its
    explanations and calibration, which the single's tests check, skipped)."""
    single = _ok(run("evaluate", f"--workdir={workdirs['single']}"))
    out = workdirs["pair"].parent / "pair-val"
    pair = _ok(run_main("evaluate", f"--workdir={workdirs['pair']}", "--split=val",
                        f"--output-dir={out}", "--no-explain", "--no-calibration"))
    return {"single": (workdirs["single"] / "eval-test", single.stdout),
            "pair": (out, pair.stdout)}


def read_predictions(path: Path) -> tuple[np.ndarray, ...]:
    """index, labels, predicted labels, probabilities `[N, C]` and class names, with `csv`."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    names = [k.removeprefix("prob_") for k in rows[0] if k.startswith("prob_")]
    index, labels, predicted = (np.array([int(r[key]) for r in rows])
                                for key in ("index", "label", "predicted"))
    probs = np.array([[float(r[f"prob_{n}"]) for n in names] for r in rows])
    return index, labels, predicted, probs, names


def recompute(labels: np.ndarray, predicted: np.ndarray, probs: np.ndarray, names: list[str]):
    """Per-class precision, recall, F1, support, and the scalars, by plain counting."""
    per_class = {}
    for c, name in enumerate(names):
        tp = int(np.sum((labels == c) & (predicted == c)))
        n_pred, support = int(np.sum(predicted == c)), int(np.sum(labels == c))
        p = tp / n_pred if n_pred else 0.0
        r = tp / support if support else 0.0
        per_class[name] = {"precision": p, "recall": r, "support": support, "accuracy": r,
                           "f1": 2 * p * r / (p + r) if p + r else 0.0}
    confidence = probs.max(1)
    ece = 0.0
    for b in range(15):
        inside = (confidence > b / 15) & (confidence <= (b + 1) / 15)
        if inside.any():
            ece += inside.sum() / len(labels) * abs(np.mean(labels[inside] == predicted[inside])
                                                    - confidence[inside].mean())
    second = np.argsort(-probs, 1)[:, 1]
    return per_class, {
        "accuracy": float(np.mean(labels == predicted)),
        "loss": float(np.mean([-math.log(p[y]) for p, y in zip(probs, labels)])),
        "top2_accuracy": float(np.mean((labels == predicted) | (labels == second))),
        "ece": ece}


def assert_matches_predictions(summary: dict, path: Path, class_names: list[str]) -> None:
    index, labels, predicted, probs, names = read_predictions(path)
    assert names == class_names
    np.testing.assert_array_equal(index, np.arange(summary["num_examples"]))
    np.testing.assert_array_equal(predicted, probs.argmax(1))
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-6)
    per_class, scalars = recompute(labels, predicted, probs, names)
    for name in names:
        for key, value in per_class[name].items():
            assert summary["per_class"][name][key] == pytest.approx(value, abs=1e-9), (name, key)
    for key, value in scalars.items():
        assert summary[key] == pytest.approx(value, abs=1e-6), key
    confusion = np.zeros((len(names), len(names)), int)
    np.add.at(confusion, (labels, predicted), 1)
    assert summary["confusion_matrix"] == confusion.tolist()
    assert summary["macro"]["f1"] == pytest.approx(np.mean([v["f1"] for v in per_class.values()]))


@pytest.mark.e2e
def test_evaluate_writes_every_file_consistent_with_predictions(evaluated):
    out, stdout = evaluated["single"]
    for name in ("metrics.json", "predictions.csv", "report.md", *FIGURES):
        assert (out / name).stat().st_size > 0, name
    for name in FIGURES:
        with Image.open(out / name) as figure:
            assert figure.format == "PNG" and min(figure.size) > 300, name
    summary = json.loads((out / "metrics.json").read_text())
    assert summary["num_examples"] == 10_000 and summary["split"] == "test"
    assert summary["predictor"] == "model" and "members" not in summary
    assert_matches_predictions(summary, out / "predictions.csv", summary["class_names"])
    pairs = summary["most_confused"]
    assert len(pairs) == 5 and pairs == sorted(pairs, key=lambda p: -p["count"])
    confusion = np.array(summary["confusion_matrix"])
    a, b = pairs[0]["a"], pairs[0]["b"]
    assert pairs[0]["count"] == confusion[a, b] + confusion[b, a]
    report = (out / "report.md").read_text()
    assert all(f"]({name})" in report for name in FIGURES)
    for name in summary["class_names"]:  # the printed classification report
        assert f"| {name}" in stdout
    assert f"accuracy {summary['accuracy']:.2%}" in stdout
    for name in ("embedding_map.png", "explain_integrated_gradients.png"):  # mlp: no Grad-CAM
        assert f"]({name})" in report
    explained = summary["explanations"]
    assert "## Explanations" in report and "grad_cam" not in explained
    assert 0 <= explained["integrated_gradients"]["deletion_auc"] <= 1
    _, labels, _, probs, _ = read_predictions(out / "predictions.csv")
    calibrated = summary["calibration"]
    assert calibrated["fitted_on"] == "val" and calibrated["model_temperature"] == 1.0
    assert calibrated["before"]["ece"] == pytest.approx(summary["ece"])
    scaled = calibration.scale(probs, calibrated["temperature"])
    assert calibrated["after"]["ece"] == pytest.approx(
        metrics.expected_calibration_error(scaled, labels), abs=1e-5)
    assert calibrated["after"]["loss"] == pytest.approx(metrics.mean_log_loss(scaled, labels),
                                                        abs=1e-5)
    assert "## Calibration" in report and "](calibration.png)" in report


@pytest.mark.e2e
def test_evaluate_multi_seed_reports_members_and_their_ensemble(evaluated, workdirs):
    out, stdout = evaluated["pair"]
    summary = json.loads((out / "metrics.json").read_text())
    record = json.loads((workdirs["pair"] / "config.json").read_text())
    assert summary["split"] == "val" and summary["num_examples"] == record["data"]["val_size"]
    assert summary["predictor"] == "ensemble" and summary["seeds"] == [0, 1]
    assert_matches_predictions(summary, out / "predictions.csv", summary["class_names"])
    member_probs = []
    for member in summary["members"]:
        path = out / f"predictions-seed{member['seed']}.csv"
        assert_matches_predictions(member, path, summary["class_names"])
        member_probs.append(read_predictions(path)[3])
    ensemble = read_predictions(out / "predictions.csv")[3]
    np.testing.assert_allclose(ensemble, np.mean(member_probs, 0), atol=1e-7)
    accuracies = [m["accuracy"] for m in summary["members"]]
    assert summary["across_members"]["accuracy"]["mean"] == pytest.approx(np.mean(accuracies))
    assert summary["across_members"]["accuracy"]["std"] == pytest.approx(np.std(accuracies, ddof=1))
    f1 = [m["per_class"]["Shirt"]["f1"] for m in summary["members"]]
    assert summary["across_members"]["per_class"]["Shirt"]["f1"]["mean"] == pytest.approx(
        np.mean(f1))
    assert "F1 of members (mean ± std)" in stdout and "2-member ensemble" in stdout


@pytest.mark.e2e
def test_compare_puts_models_side_by_side_with_mean_and_std(evaluated, workdirs, tmp_path):
    output = tmp_path / "compare.md"
    with pytest.raises(UserError, match=r"no evaluation of the val split \(.*\); run scripts/eval"):
        comparison.find_metrics(workdirs["single"], "val")
    _ok(run_main("evaluate", f"--workdir={workdirs['single']}", "--split=val", "--no-explain",
                 "--no-calibration"))
    result = _ok(run("compare", str(workdirs["single"]), str(evaluated["pair"][0]),
                     "--split=val", f"--output={output}"))
    table = output.read_text()
    assert table in result.stdout
    single = json.loads((workdirs["single"] / "eval-val" / "metrics.json").read_text())
    pair = json.loads((evaluated["pair"][0] / "metrics.json").read_text())
    stats = pair["across_members"]["accuracy"]
    assert "| mlp    |" in table and "| mlp ×2 |" in table
    assert f"{single['accuracy']:.2%}" in table
    assert f"{stats['mean']:.2%} ± {stats['std']:.2%}" in table
    assert f"{pair['accuracy']:.2%}" in table  # the ensemble's column
    compared = json.loads(output.with_suffix(".json").read_text())
    assert [m["label"] for m in compared["models"]] == ["mlp", "mlp ×2"]
    mean_f1 = {n: np.mean([m["per_class_f1"][n]["mean"] for m in compared["models"]])
               for n in single["class_names"]}
    hardest = sorted(mean_f1, key=mean_f1.get)[:3]
    assert [h["class"] for h in compared["hardest_classes"]] == hardest
    assert f"Hardest classes: {hardest[0]} " in table
    assert (tmp_path / "compare_f1.png").stat().st_size > 0
    assert (tmp_path / "compare_differences.png").stat().st_size > 0
    difference = compared["models"][1]["difference"]
    assert difference["against"] == "mlp" and compared["models"][0]["difference"] is None
    assert difference["difference"] == pytest.approx(pair["accuracy"] - single["accuracy"])
    assert "## Differences" in table and f"{100 * difference['difference']:+.2f}" in table


def test_compare_takes_an_evaluation_folder_anywhere_or_an_evaluated_workdir(tmp_path):
    folder, workdir = tmp_path / "elsewhere" / "cnn-eval", tmp_path / "run"
    for path in (folder, workdir / "eval-val"):
        path.mkdir(parents=True)
        (path / "metrics.json").write_text("{}")
    assert comparison.find_metrics(folder, "test") == folder / "metrics.json"
    assert comparison.find_metrics(workdir, "val") == workdir / "eval-val" / "metrics.json"
    with pytest.raises(UserError, match="or give the folder of its --output-dir"):
        comparison.find_metrics(workdir, "test")


@pytest.mark.e2e
def test_evaluate_reads_a_release_with_its_data_elsewhere(tmp_path, real_data_dir):
    """--data-dir on a shipped release, on a machine without the data where it was trained."""
    release = ROOT / "checkpoints" / "pretrained" / "mlp"
    elsewhere = tmp_path / "my data"
    elsewhere.mkdir()
    for name in (n for pair in data.FILES.values() for n in pair):
        shutil.copy(real_data_dir / name, elsewhere / name)
    home = {"HOME": str(tmp_path / "home"), "TFDS_DATA_DIR": str(tmp_path / "home" / "tfds")}
    out = tmp_path / "eval"
    # no Debian folder, no network: only --data-dir (explanations, which read no data, skipped)
    _ok(run("evaluate", f"--workdir={release}", f"--data-dir={elsewhere}", f"--output-dir={out}",
            "--no-explain", fault="offline", env=home))
    recorded = json.loads((release / "release.json").read_text())["test_accuracy"][0]
    assert json.loads((out / "metrics.json").read_text())["accuracy"] == pytest.approx(recorded)
    missing = one_line_error(run("evaluate", f"--workdir={release}", f"--output-dir={out}",
                                 fault="offline", env=home), 2)
    assert missing.startswith("error: no local copy of Fashion-MNIST found and "), missing
    wrong = one_line_error(run_main("evaluate", f"--workdir={release}", f"--output-dir={out}",
                                    f"--data-dir={tmp_path / 'nowhere'}"), 2)
    assert wrong.startswith(f"error: --data-dir {tmp_path / 'nowhere'} does not exist"), wrong


def test_a_workdir_without_checkpoints_is_a_clear_error(tmp_path):
    with pytest.raises(CheckpointError, match="holds no checkpoints; train first"):
        restore.load_workdir(tmp_path)


@pytest.fixture(scope="module")
def sample_images(real_data_dir) -> data.Split:
    return data.load_idx_folder(real_data_dir)["test"].take(slice(0, 3))


def as_photo(image: np.ndarray) -> np.ndarray:
    """A dataset image as a colour photo: dark garment on cream paper, 6x larger, off-centre."""
    big = np.asarray(Image.fromarray(255 - image[..., 0]).resize((168, 168),
                                                                Image.Resampling.BICUBIC), float)
    paper = np.full((240, 210), 255.0)
    paper[50:218, 10:178] = big
    return np.stack([paper * 0.97, paper * 0.92, paper * 0.8 + 30], -1).clip(0, 255).astype(
        np.uint8)


@pytest.mark.e2e
def test_predict_classifies_files_and_reports_bad_ones(evaluated, workdirs, sample_images,
                                                       tmp_path):
    plain, inverted, photo, text = (tmp_path / n for n in ("plain.png", "inverted.png",
                                                          "photo.jpg", "notes.png"))
    Image.fromarray(sample_images.images[0, ..., 0]).save(plain)
    Image.fromarray(255 - sample_images.images[0, ..., 0]).save(inverted)
    Image.fromarray(as_photo(sample_images.images[1])).save(photo, quality=92)
    text.write_text("not an image")
    files = [str(p) for p in (plain, text, inverted, photo)]
    result = run("predict", f"--workdir={workdirs['single']}", "--json", *files)
    assert result.returncode == 2, result.stderr
    results = json.loads(result.stdout)
    assert [r["file"] for r in results] == files
    assert "not an image" in results[1]["error"] and "top" not in results[1]
    _, _, _, probs, names = read_predictions(evaluated["single"][0] / "predictions.csv")
    expected = [names[i] for i in np.argsort(-probs[0])[:3]]
    for r in (results[0], results[2]):  # a 28x28 test image, and its negative, as evaluated
        assert [t["class"] for t in r["top"]] == expected
        assert r["top"][0]["probability"] == pytest.approx(probs[0].max(), abs=1e-5)
    top = results[3]["top"]
    assert len(top) == 3 and top[0]["probability"] >= top[1]["probability"] >= top[2]["probability"]
    text_run = run_main("predict", f"--workdir={workdirs['single']}", str(plain), str(text))
    assert text_run.returncode == 2
    assert text_run.stdout.startswith(f"{plain}: {expected[0]} ")
    assert f"error: {text}: not an image" in text_run.stderr


def test_a_dataset_image_and_its_negative_are_taken_as_they_are(sample_images):
    image = sample_images.images[0]
    np.testing.assert_array_equal(images.to_model_input(image[..., 0]), image)
    np.testing.assert_array_equal(images.to_model_input(255 - image[..., 0].astype(float)), image)


def test_a_colour_photo_is_trimmed_negated_and_centred(sample_images, tmp_path):
    path = tmp_path / "photo.png"
    Image.fromarray(as_photo(sample_images.images[1])).save(path)
    made = images.load_image(path)
    assert made.shape == (28, 28, 1) and made.dtype == np.uint8
    original = sample_images.images[1].astype(float)
    assert np.abs(made - original).mean() < 30  # close to the image it was made from
    assert np.corrcoef(made.ravel(), original.ravel())[0, 1] > 0.9  # negated, and aligned


def test_transparent_and_16_bit_images_are_read(tmp_path):
    rgba = np.zeros((40, 30, 4), np.uint8)
    rgba[5:35, 10:20] = (20, 20, 20, 255)  # a dark 30x10 bar on a transparent background
    Image.fromarray(rgba, "RGBA").save(tmp_path / "clear.png")
    made = images.load_image(tmp_path / "clear.png")[..., 0]
    assert made[:, 14].min() > 200 and made[:, :9].max() == 0 == made[:, 19:].max()
    deep = (np.arange(64 * 64, dtype=np.uint16).reshape(64, 64) * 16)
    Image.fromarray(deep).save(tmp_path / "deep.png")
    assert images.load_image(tmp_path / "deep.png").shape == (28, 28, 1)


def test_a_file_that_is_not_an_image_raises_a_user_error(tmp_path):
    (tmp_path / "x.png").write_bytes(b"\x89PNG broken")
    with pytest.raises(images.ImageFileError, match="not an image"):
        images.load_image(tmp_path / "x.png")
    with pytest.raises(images.ImageFileError, match="no such file"):
        images.load_image(tmp_path / "missing.png")


def bomb_png(width: int, height: int) -> bytes:
    """A valid PNG of about a kilobyte whose header declares `width` x `height` grey pixels: its
    one IDAT chunk is a megabyte of zero bytes, compressed (a decompression bomb)."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return (struct.pack(">I", len(body)) + kind + body
                + struct.pack(">I", zlib.crc32(kind + body)))
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit greyscale
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
            + chunk(b"IDAT", zlib.compress(bytes(2**20), 9)) + chunk(b"IEND", b""))


@pytest.mark.parametrize("width, height, message", [
    (100_000, 100_000, "over the limit of 40,000,000 pixels; scale it down (Image size "
                       "(10000000000 pixels) exceeds"),  # PIL's own error
    (10_000, 10_000, "over the limit of 40,000,000 pixels; scale it down (Image size "
                     "(100000000 pixels) exceeds"),  # PIL's own warning
    (8_000, 5_001, "8000 x 5001 pixels, over the limit of 40,000,000 pixels; scale it down"),
])
def test_an_image_over_the_pixel_limit_is_refused_before_decoding(width, height, message,
                                                                  tmp_path):
    path = tmp_path / "bomb.png"
    path.write_bytes(bomb_png(width, height))
    assert path.stat().st_size < 2000
    with pytest.raises(images.ImageFileError, match="^" + re.escape(f"{path}: {message}")):
        images.read_image(path)
    with pytest.raises(images.ImageFileError, match="^" + re.escape(f"image: {message}")):
        images.read_image(io.BytesIO(bomb_png(width, height)))


def test_a_file_over_the_size_limit_is_refused_before_decoding(tmp_path, monkeypatch):
    path = tmp_path / "big.png"
    Image.fromarray(np.zeros((28, 28), np.uint8)).save(path)
    size = path.stat().st_size
    monkeypatch.setattr(images, "MAX_IMAGE_BYTES", size - 1)
    expected = f"{size:,} bytes, over the limit of {size - 1:,}; use a smaller file"
    with pytest.raises(images.ImageFileError, match=f"^{re.escape(f'{path}: {expected}')}$"):
        images.read_image(path)
    with pytest.raises(images.ImageFileError, match=f"^{re.escape(f'image: {expected}')}$"):
        images.read_image(io.BytesIO(path.read_bytes()))


def test_uploaded_bytes_read_as_the_file_does(sample_images, tmp_path):
    path = tmp_path / "photo.jpg"
    Image.fromarray(as_photo(sample_images.images[1])).save(path, quality=92)
    from_file = images.read_image(path)
    from_bytes = images.read_image(io.BytesIO(path.read_bytes()))
    chex.assert_shape(from_bytes, from_file.shape)
    np.testing.assert_array_equal(from_bytes, from_file)
    np.testing.assert_array_equal(images.load_image(io.BytesIO(path.read_bytes())),
                                  images.load_image(path))


@pytest.mark.e2e
def test_predict_refuses_a_decompression_bomb_and_classifies_the_other_files(sample_images,
                                                                             tmp_path):
    good = tmp_path / "garment.png"
    Image.fromarray(sample_images.images[0, ..., 0]).save(good)
    bombs = [tmp_path / "bomb.png", tmp_path / "large.png"]
    bombs[0].write_bytes(bomb_png(100_000, 100_000))
    bombs[1].write_bytes(bomb_png(7_000, 7_000))
    release = ROOT / "checkpoints" / "pretrained" / "mlp"
    result = run("predict", f"--workdir={release}", str(bombs[0]), str(good), str(bombs[1]))
    assert result.returncode == 2, result.stderr
    assert result.stdout.startswith(f"{good}: ") and len(result.stdout.splitlines()) == 1
    assert result.stderr.splitlines() == [
        f"error: {bombs[0]}: over the limit of 40,000,000 pixels; scale it down (Image size "
        f"(10000000000 pixels) exceeds limit of 178956970 pixels, could be decompression bomb "
        f"DOS attack.)",
        f"error: {bombs[1]}: 7000 x 7000 pixels, over the limit of 40,000,000 pixels; scale it "
        f"down"], result.stderr
