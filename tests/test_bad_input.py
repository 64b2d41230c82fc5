"""Bad input to the real scripts: exit code 2 and one line on stderr naming the problem and the fix.

Every case checks the whole of stderr: no traceback, no log noise, one line. Each script meets its
cases as a user would, in a subprocess; cases refused at the same place as one of those (before
anything is compiled) run the script's `main` in this process (runs.run_main). A workdir the case
points at is left exactly as it was.
"""

from __future__ import annotations

import dataclasses
import gzip
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import subprocess_runs as runs
from conftest import synthetic_split, write_idx_folder
from fmnist_jax import data, idx
from fmnist_jax.models import MODELS

pytestmark = pytest.mark.e2e
TRAIN_IMAGES, TRAIN_LABELS = data.FILES["train"]
GET_DATA = "get the data offline with `apt-get install -y dataset-fashion-mnist`"
REPLACE_FILE = ("replace the file (e.g. `apt-get install --reinstall dataset-fashion-mnist`) or "
                "point --data-dir at a folder with the four official files")
NUM_TRAIN = 540  # the synthetic folder's 600 training images less the 10% validation split


@dataclasses.dataclass(frozen=True)
class Places:
    """A case's surroundings: a valid IDX folder it may break, a trained workdir, a scratch dir."""

    data: Path
    trained: Path
    tmp: Path

    def copy_of_trained(self) -> Path:
        return Path(shutil.copytree(self.trained, self.tmp / "copy"))


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, dict[str, bytes]]:
    """A workdir of an mlp trained 2 epochs (checkpoint steps 9 and 18), and its files' bytes."""
    root = tmp_path_factory.mktemp("trained")
    folder = write_idx_folder(root / "data", synthetic_split(600), synthetic_split(200, seed=1))
    workdir = root / "run"
    result = runs.run_main("train", "--model=mlp", "--config.model.hidden=(64,)", "--epochs=2",
                           "--batch-size=60", f"--data-dir={folder}", f"--workdir={workdir}")
    assert result.returncode == 0, result.stderr
    return workdir, _snapshot(workdir)


@pytest.fixture
def places(tmp_path, trained) -> Places:
    folder = write_idx_folder(tmp_path / "data", synthetic_split(600), synthetic_split(200, seed=1))
    return Places(folder, trained[0], tmp_path)


@pytest.fixture(scope="module")
def other_tfds_dataset(tmp_path_factory) -> Path:
    """A real, prepared tfds data dir holding another dataset (`tiny_digits`), built without TF."""
    import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel

    class TinyDigits(tfds.core.GeneratorBasedBuilder):
        """Ten constant images."""

        VERSION = tfds.core.Version("1.0.0")

        def _info(self):
            return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
                "image": tfds.features.Tensor(shape=(28, 28, 1), dtype=np.uint8),
                "label": tfds.features.ClassLabel(num_classes=10)}))

        def _split_generators(self, dl_manager):
            return {"train": self._generate_examples()}

        def _generate_examples(self):
            for i in range(10):
                yield i, {"image": np.full((28, 28, 1), i, np.uint8), "label": i}

    root = tmp_path_factory.mktemp("tfds")
    TinyDigits(data_dir=root, file_format="array_record").download_and_prepare()
    return root


# --- the data folder, broken one way per case ------------------------------------------------

def _train(places: Places, *args: str) -> list[str]:
    """Training flags on the case's data folder and a fresh workdir, then `args`."""
    return ["--model=mlp", "--config.epochs=1", f"--data-dir={places.data}",
            f"--workdir={places.tmp / 'run'}", *args]


def _rewrite(path: Path, edit: Callable[[bytes], bytes]) -> None:
    path.write_bytes(edit(path.read_bytes()))


def _gunzipped(edit: Callable[[bytes], bytes]) -> Callable[[bytes], bytes]:
    """`edit` applied to the IDX payload inside a gzip file, recompressed (a valid gzip)."""
    return lambda raw: gzip.compress(edit(gzip.decompress(raw)), mtime=0)


def _flip_middle(raw: bytes) -> bytes:
    middle = len(raw) // 2
    return raw[:middle] + bytes(b ^ 0xFF for b in raw[middle:middle + 16]) + raw[middle + 16:]


def _broken_data(file: str, edit: Callable[[bytes], bytes]) -> Callable[[Places], list[str]]:
    def args(places: Places) -> list[str]:
        _rewrite(places.data / file, edit)
        return _train(places)
    return args


def _replaced_data(file: str, array: np.ndarray) -> Callable[[Places], list[str]]:
    def args(places: Places) -> list[str]:
        idx.write_idx(places.data / file, array)
        return _train(places)
    return args


def _missing_folder(places: Places) -> list[str]:
    shutil.rmtree(places.data)
    return _train(places)


def _missing_file(places: Places) -> list[str]:
    (places.data / TRAIN_LABELS).unlink()
    return _train(places)


LABELS_599 = synthetic_split(599).labels.astype(np.uint8)
LABELS_WITH_10 = np.append(synthetic_split(599).labels, 10).astype(np.uint8)
IMAGES_32 = np.zeros((600, 32, 32), np.uint8)

DATA_CASES = [
    pytest.param(_missing_folder, ("does not exist", GET_DATA), id="missing-folder"),
    pytest.param(_missing_file, (f"lacks {TRAIN_LABELS} of the four Fashion-MNIST IDX files",
                                 GET_DATA), id="missing-file"),
    pytest.param(_broken_data(TRAIN_IMAGES, lambda raw: raw[:len(raw) // 2]),
                 (f"{TRAIN_IMAGES} is not a valid gzip file (Compressed file ended",
                  REPLACE_FILE), id="truncated-gzip"),
    pytest.param(_broken_data(TRAIN_IMAGES, _flip_middle),
                 (f"{TRAIN_IMAGES} is not a valid gzip file (", REPLACE_FILE), id="corrupt-gzip"),
    pytest.param(_broken_data(TRAIN_IMAGES, lambda raw: b""),
                 (f"{TRAIN_IMAGES} is truncated (0 bytes, header needs 16)", REPLACE_FILE),
                 id="empty-file"),
    pytest.param(_replaced_data(TRAIN_IMAGES, LABELS_599),
                 (f"{TRAIN_IMAGES} has IDX magic number 0x00000801, expected 0x00000803",
                  REPLACE_FILE), id="wrong-idx-magic"),
    pytest.param(_broken_data(TRAIN_IMAGES, _gunzipped(lambda payload: payload[:-784])),
                 (f"{TRAIN_IMAGES} holds 469632 bytes but its header (600, 28, 28) needs 470416",
                  REPLACE_FILE), id="payload-shorter-than-header"),
    pytest.param(_replaced_data(TRAIN_LABELS, LABELS_599),
                 ("holds 600 images but", f"{TRAIN_LABELS} holds 599 labels", REPLACE_FILE),
                 id="wrong-counts"),
    pytest.param(_replaced_data(TRAIN_LABELS, LABELS_WITH_10),
                 (f"{TRAIN_LABELS} has label 10, outside 0..9", REPLACE_FILE),
                 id="label-out-of-range"),
    pytest.param(_replaced_data(TRAIN_IMAGES, IMAGES_32),
                 ("holds images of (32, 32), expected (28, 28)", REPLACE_FILE),
                 id="images-not-28x28"),
]

# --- flags and config -------------------------------------------------------------------------


def _flags(*args: str) -> Callable[[Places], list[str]]:
    return lambda places: _train(places, *args)


def _broken_config_file(places: Places) -> list[str]:
    path = places.tmp / "broken.py"
    path.write_text("def get_config(:\n")
    return [f"--config={path}", f"--workdir={places.tmp / 'run'}"]


def _fraction(value: str) -> pytest.param:
    return pytest.param(_flags(f"--config.data.val_fraction={value}"),
                        (f"config.data.val_fraction must lie in (0, 1), got {float(value)}",),
                        id=f"val-fraction-{value}")


def _learning_rate(value: str) -> pytest.param:
    return pytest.param(_flags(f"--learning-rate={value}"),
                        ("config.optimizer.learning_rate must be positive and finite, got "
                         f"{float(value)}",), id=f"learning-rate-{value}")


CONFIG_CASES = [
    pytest.param(_flags("--model=nosuchnet"),
                 ("argument --model: invalid choice: 'nosuchnet' (choose from "
                  f"{', '.join(repr(m) for m in MODELS)}); see --help",), id="unknown-model"),
    pytest.param(_flags("--config.model.name=nosuchnet"),
                 (f"unknown model 'nosuchnet'; valid models: {', '.join(MODELS)}",),
                 id="unknown-model-field"),
    pytest.param(lambda places: [f"--config={places.tmp / 'nope.py'}",
                                 f"--workdir={places.tmp / 'run'}"],
                 (f"nope.py not found; model configs: {', '.join(sorted(MODELS))}",),
                 id="missing-config-file"),
    pytest.param(_broken_config_file,
                 ("broken.py failed to load (SyntaxError:", "fix it so that get_config() returns"),
                 id="broken-config-file"),
    pytest.param(_flags("--config.optimizer.learnig_rate=0.1"),
                 ("unknown config field 'optimizer.learnig_rate'; did you mean "
                  "'optimizer.learning_rate'? see --help",), id="unknown-config-field"),
    pytest.param(_flags("--batchsize=64"),
                 ("unrecognized argument '--batchsize=64'; did you mean --batch-size? see --help",),
                 id="unknown-flag"),
    pytest.param(_flags("--config.seed"), ("--config.seed needs a value: --config.seed=VALUE",),
                 id="field-without-value"),
    pytest.param(_flags("--epochs=three"),
                 ("argument --epochs: invalid int value: 'three'; see --help",),
                 id="shorthand-wrong-type"),
    pytest.param(_flags("--config.batch_size=1.5"),
                 ("--config.batch_size='1.5' is not a valid int; give one like its current "
                  "value 128",), id="int-field-wrong-type"),
    pytest.param(_flags("--config.optimizer.nesterov=maybe"),
                 ("--config.optimizer.nesterov='maybe' is not a valid bool",),
                 id="bool-field-wrong-type"),
    pytest.param(_flags("--config.model.hidden=(64,'a')"),
                 ("--config.model.hidden=\"(64,'a')\" is not a valid tuple; give one like its "
                  "current value (512, 256, 128)",), id="tuple-field-wrong-type"),
    pytest.param(_flags("--epochs=0"), ("config.epochs must be positive, got 0",),
                 id="zero-epochs"),
    pytest.param(_flags("--epochs=-3"), ("config.epochs must be positive, got -3",),
                 id="negative-epochs"),
    pytest.param(_flags("--batch-size=0"), ("config.batch_size must be positive, got 0",),
                 id="zero-batch-size"),
    pytest.param(_flags("--seeds=0"), ("config.num_seeds must be positive, got 0",),
                 id="zero-seeds"),
    *[_learning_rate(value) for value in ("0", "-0.001", "inf", "nan")],
    *[_fraction(value) for value in ("0", "1", "1.5", "-0.1")],
    pytest.param(_flags("--batch-size=1000"),
                 (f"batch size 1000 exceeds the {NUM_TRAIN} training images; lower --batch-size",),
                 id="batch-larger-than-split"),
    pytest.param(_flags("--train-limit=1000"),
                 (f"train_limit 1000 exceeds the {NUM_TRAIN} training images left after the "
                  "validation split; lower --train-limit, or 0 for all",),
                 id="train-limit-larger-than-split"),
    pytest.param(_flags("--train-limit=-5"), ("config.data.train_limit must be >= 0 (0 = all)",),
                 id="negative-train-limit"),
    pytest.param(_flags("--config.optimizer.name=rmsprop"),
                 ("unknown optimizer 'rmsprop'; valid: adam, adamw, sgd",),
                 id="unknown-optimizer"),
]

# --- checkpoints ----------------------------------------------------------------------------


def _resume(places: Places, *args: str) -> list[str]:
    """Training flags on the trained workdir: as it was trained, but for `args`."""
    return ["--batch-size=60", *args, f"--data-dir={places.data}",
            f"--workdir={places.trained}"]


def _all_steps_corrupt(places: Places) -> Path:
    workdir = places.copy_of_trained()
    for step in ("9", "18"):
        (workdir / "checkpoints" / step / "meta" / "metadata").write_text("{not json")
    return workdir


CHECKPOINT_CASES = [
    pytest.param(lambda places: _resume(places, "--model=cnn"),
                 ("holds a checkpoint of model 'mlp', not 'cnn'; use another --workdir",),
                 id="train-on-workdir-of-another-model"),
    pytest.param(lambda places: _resume(places, "--model=mlp", "--config.model.hidden=(32,)"),
                 ("was trained with another config: model.hidden ([64] -> [32]); use another "
                  "--workdir or the same settings",), id="train-on-workdir-of-another-shape"),
    pytest.param(lambda places: _resume(places, "--model=mlp", "--config.model.hidden=(64,)",
                                        "--learning-rate=0.01"),
                 ("optimizer.learning_rate (0.001 -> 0.01)",),
                 id="train-on-workdir-of-another-learning-rate"),
    pytest.param(lambda places: ["--model=mlp", "--config.model.hidden=(64,)", "--batch-size=60",
                                 f"--data-dir={places.data}",
                                 f"--workdir={_all_steps_corrupt(places)}"],
                 ("no readable checkpoint in", "step 18 (JSONDecodeError:", "step 9 (",
                  "move that folder away to start over, or use another --workdir"),
                 id="train-on-workdir-with-only-corrupt-checkpoints"),
]


def assert_one_clear_line(result, expected: tuple[str, ...]) -> None:
    line = runs.one_line_error(result, 2)
    assert line.startswith("error: ")
    for fragment in expected:
        assert fragment in line


# One data case runs as a real script (the one that reads every file through); the others fail
# at the same place (reading the data folder, before anything is compiled), so they run the
# script's `main` in this process (runs.run_main), a subprocess start faster, as the
# batch-larger-than-split flag cases do. Of the checkpoint cases, the refused config change
# (check_resumable, on the run record alone) runs as a real script for one field, and the
# unreadable checkpoints (orbax's failed reads) as a real script too.
IN_SCRIPTS = ("label-out-of-range", "train-on-workdir-of-another-shape",
              "train-on-workdir-with-only-corrupt-checkpoints")


def _cases(in_scripts: bool) -> list:
    return [case for case in DATA_CASES + CHECKPOINT_CASES
            if (case.id in IN_SCRIPTS) == in_scripts]


@pytest.mark.parametrize("make_args, expected", _cases(True))
def test_bad_data_or_workdir_fails_with_one_clear_line(make_args, expected, places, trained):
    assert_one_clear_line(runs.run("train", *make_args(places)), expected)
    assert _snapshot(places.trained) == trained[1]  # nothing written to the trained workdir


@pytest.mark.parametrize("make_args, expected", _cases(False))
def test_bad_data_or_workdir_fails_with_one_clear_line_from_main(make_args, expected, places,
                                                                 trained):
    assert_one_clear_line(runs.run_main("train", *make_args(places)), expected)
    assert _snapshot(places.trained) == trained[1]  # nothing written to the trained workdir


@pytest.mark.parametrize("make_args, expected", CONFIG_CASES)
def test_bad_flag_or_config_fails_with_one_clear_line(make_args, expected, places):
    assert_one_clear_line(runs.run_main("train", *make_args(places)), expected)


SCRIPTS = sorted(path.stem for path in (runs.ROOT / "scripts").glob("*.py"))
REQUIRED = {"compare": ("DIR",), "evaluate": ("--workdir=W",), "export": ("--workdir=W", "--out=O"),
            "predict": ("--workdir=W", "shirt.png"), "serve": ("--workdir=W",),
            "similar": ("--workdir=W",)}


@pytest.mark.parametrize("script", SCRIPTS)
def test_every_scripts_flag_errors_are_one_line(script):
    """cli.Parser: argparse's own errors without its usage block, exit code 2."""
    unknown = runs.run_main(script, *REQUIRED.get(script, ()), "--no-such-flag=1")
    assert_one_clear_line(unknown, ("unrecognized argument", "--no-such-flag=1", "see --help"))
    if script in REQUIRED:
        assert_one_clear_line(runs.run_main(script),
                              ("the following arguments are required: ", "see --help"))


@pytest.mark.parametrize("flag", ["--data-dir={}", "--config.data.dir={}"])
def test_benchmark_checks_its_data_location_before_measuring(flag, tmp_path):
    missing = tmp_path / "nowhere"
    assert_one_clear_line(runs.run_main("benchmark", "--models=mlp", flag.format(missing)),
                          (f"--data-dir {missing} does not exist", GET_DATA))


def test_tfds_dir_of_another_dataset_is_named(places, other_tfds_dataset):
    result = runs.run("train", "--model=mlp", f"--data-dir={other_tfds_dataset}",
                      f"--workdir={places.tmp / 'run'}")
    line = runs.one_line_error(result, 2)
    assert line == (f"error: --data-dir {other_tfds_dataset} is a tfds data dir of tiny_digits, "
                    f"with no prepared fashion_mnist; {data.HOW_TO_GET}")


def test_no_data_and_no_network_fails_fast_saying_how_to_get_it_offline(places):
    empty = places.tmp / "home"  # no tfds data dir; no --data-dir, so the sources are searched
    result = runs.run("train", "--model=mlp", f"--workdir={places.tmp / 'run'}", fault="offline",
                      env={"HOME": str(empty), "TFDS_DATA_DIR": str(empty / "tfds")})
    line = runs.one_line_error(result, 2)
    assert line.startswith("error: no local copy of Fashion-MNIST found and ")
    assert line.endswith(f" is unreachable; {data.HOW_TO_GET}")


# --- evaluate.py and predict.py -------------------------------------------------------------


def _empty_workdir(places: Places) -> list[str]:
    (places.tmp / "empty").mkdir()
    return [f"--workdir={places.tmp / 'empty'}"]


WORKDIR_CASES = [
    pytest.param(_empty_workdir, ("holds no checkpoints; train first with scripts/train.py "
                                  "--workdir=",), id="workdir-without-checkpoint"),
    pytest.param(lambda places: [f"--workdir={places.tmp / 'nowhere'}"],
                 ("holds no checkpoints; train first with scripts/train.py --workdir=",),
                 id="missing-workdir"),
    pytest.param(lambda places: [f"--workdir={_all_steps_corrupt(places)}"],
                 ("no readable checkpoint in", "step 18 (JSONDecodeError:", "step 9 ("),
                 id="workdir-with-only-corrupt-checkpoints"),
]


WORKDIR_SCRIPTS = [("evaluate", ()), ("predict", ("some.png",)), ("similar", ("--precision-at-k",))]
# A workdir without checkpoints (empty or missing) is refused before anything is read or
# compiled (restore.load_workdir's first check): those cases run the script's `main` in this
# process (runs.run_main). Every script still meets every corrupt workdir as a real script, which
# fails with the same one-line error after orbax's reads.
FROM_MAIN = ("workdir-without-checkpoint", "missing-workdir")


def _workdir_cases(from_main: bool) -> list:
    return [pytest.param(script, extra, *case.values, id=f"{case.id}-{script}")
            for case in WORKDIR_CASES for script, extra in WORKDIR_SCRIPTS
            if (case.id in FROM_MAIN) == from_main]


@pytest.mark.parametrize("script, extra, make_args, expected", _workdir_cases(False))
def test_bad_workdir_fails_with_one_clear_line(script, extra, make_args, expected, places):
    assert_one_clear_line(runs.run(script, *make_args(places), *extra), expected)


@pytest.mark.parametrize("script, extra, make_args, expected", _workdir_cases(True))
def test_bad_workdir_fails_with_one_clear_line_from_main(script, extra, make_args, expected,
                                                         places):
    assert_one_clear_line(runs.run_main(script, *make_args(places), *extra), expected)


def test_predict_names_each_unreadable_file_and_still_classifies_the_others(places):
    good = places.tmp / "garment.png"
    Image.fromarray(synthetic_split(1).images[0, ..., 0]).save(good)
    (places.tmp / "notes.png").write_bytes(b"shopping list")  # not an image
    (places.tmp / "cut.png").write_bytes(good.read_bytes()[:60])  # a PNG cut short
    (places.tmp / "folder.png").mkdir()  # not a file
    bad = [str(places.tmp / name) for name in ("missing.png", "notes.png", "cut.png", "folder.png")]
    result = runs.run("predict", f"--workdir={places.trained}", bad[0], str(good), *bad[1:])
    assert result.returncode == 2, result.stderr  # some files failed: bad input
    assert [line.partition(": ")[0] for line in result.stdout.splitlines()] == [str(good)]
    errors = result.stderr.strip().splitlines()
    assert len(errors) == len(bad) and "Traceback" not in result.stderr, result.stderr
    assert all(line.startswith(f"error: {path}: ") for line, path in zip(errors, bad)), errors
    assert errors[0] == f"error: {bad[0]}: no such file"


def _damaged_portable(places: Places, damage: str) -> Path:
    """A copy of the mlp release's portable model, damaged."""
    folder = places.tmp / "portable"
    folder.mkdir()
    for name in ("model.jaxexport", "model.json"):
        shutil.copy(runs.ROOT / "checkpoints" / "pretrained" / "mlp" / name, folder / name)
    if damage == "truncated-export":
        _rewrite(folder / "model.jaxexport", lambda raw: raw[:len(raw) // 2])
    elif damage == "garbled-metadata":
        _rewrite(folder / "model.json", lambda raw: raw[:len(raw) // 2])
    else:
        _rewrite(folder / "model.json", lambda raw: raw.replace(b'"model"', b'"name"', 1))
    return folder


@pytest.mark.parametrize("damage, says", [
    ("truncated-export", "cannot be loaded ("),
    ("garbled-metadata", "model.json is not valid JSON"),
    ("metadata-without-model", "model.json breaks its schema: 'model' is missing")])
def test_serve_on_a_damaged_portable_model_fails_at_start_with_one_line(damage, says, places):
    folder = _damaged_portable(places, damage)
    args = (f"--workdir={folder}", "--port=0")  # the damaged export as a real run; JSON in process
    result = runs.run("serve", *args, timeout=120) if damage == "truncated-export" \
        else runs.run_main("serve", *args)
    assert_one_clear_line(result, (f"{folder}", says, "scripts/export.py"))
    assert "serving" not in result.stdout


def test_similar_refuses_more_neighbours_than_training_images(places, trained):
    result = runs.run_main("similar", f"--workdir={places.trained}", "-k", "100000",
                           "--precision-at-k")
    assert_one_clear_line(result, (f"-k=100000 asks for more neighbours than the {NUM_TRAIN} "
                                   f"training images", f"give -k from 1 to {NUM_TRAIN}"))
    assert _snapshot(places.trained) == trained[1]


def test_similar_rebuilds_a_truncated_embeddings_cache_saying_so(places):
    workdir = places.copy_of_trained()
    args = (f"--workdir={workdir}", "-k", "3", "--precision-at-k")
    assert runs.run_main("similar", *args).returncode == 0  # builds the cache; the rebuild is real
    cache = workdir / "eval-embeddings" / "train-member0.npy"  # member 0 of the one trained
    whole = cache.read_bytes()
    cache.write_bytes(whole[:len(whole) // 2])
    result = runs.run("similar", *args)
    assert result.returncode == 0, result.stderr
    assert f"the cached embeddings in {cache.parent} cannot be read (" in result.stderr
    assert "computing them again" in result.stderr and "Traceback" not in result.stderr
    assert cache.read_bytes() == whole


def test_a_run_refused_before_training_leaves_no_workdir(places):
    workdir = places.tmp / "new" / "run"
    assert_one_clear_line(runs.run_main("train", "--model=mlp", f"--data-dir={places.data}",
                                        "--batch-size=1000", f"--workdir={workdir}"),
                          ("batch size 1000 exceeds the",))
    assert not workdir.exists()
