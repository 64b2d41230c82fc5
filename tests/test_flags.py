"""Flags checked before anything runs: ranges, output paths and contradicting flags are refused
with one line (exit 2) and nothing is read or written (cli.whole_number, cli.output_dir,
cli.output_file, cli.refuse_together, sweep.MAX_MEMBERS)."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import pytest

import subprocess_runs as runs
from fmnist_jax import cli, images, sweep

RELEASE = str(runs.ROOT / "checkpoints" / "pretrained" / "mlp")


def _refused(script: str, *args: str) -> str:
    line = runs.one_line_error(runs.run_main(script, *args), 2)
    assert line.startswith("error: ") and line.endswith("see --help"), line
    return line


@pytest.mark.parametrize("top", ["0", "-3", "11", "two"])
def test_predict_top_is_refused_outside_the_servers_range(top):
    line = _refused("predict", f"--workdir={RELEASE}", "shirt.png", f"--top={top}")
    assert f"--top: must be a whole number from 1 to {images.MAX_TOP}, got '{top}'" in line


def test_predict_explain_into_an_existing_file_is_refused(tmp_path):
    taken = tmp_path / "notes.txt"
    taken.write_text("mine")
    line = _refused("predict", f"--workdir={RELEASE}", "shirt.png", f"--explain={taken}")
    assert f"--explain: {taken} is a file, not a folder" in line
    assert taken.read_text() == "mine" and list(tmp_path.iterdir()) == [taken]


@pytest.mark.parametrize("where", ["under-a-file", "unwritable"])
def test_predict_explain_where_nothing_can_be_written_is_refused(where, tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    out = tmp_path / "notes.txt" / "maps" if where == "under-a-file" else Path("/proc/maps-here")
    line = _refused("predict", f"--workdir={RELEASE}", "shirt.png", f"--explain={out}")
    assert f"--explain: {out}" in line and ("which is a file" in line or "cannot write" in line)


def test_similar_needs_at_least_one_neighbour():
    assert "-k: must be a whole number of 1 or more, got '0'" in _refused(
        "similar", f"--workdir={RELEASE}", "-k", "0", "--precision-at-k")


@pytest.mark.parametrize("flags, expected", [
    (("--out=OUT", "--seed=0", "--member=1"), "--member cannot be combined with --seed"),
    (("--out=OUT", "--seed=0", "--member=0"), "--member cannot be combined with --seed"),
    (("--portable-only", "--seed=1"), "--portable-only cannot be combined with --seed"),
    (("--portable-only", "--no-tta", "--overwrite"),
     "--portable-only cannot be combined with --overwrite, --tta"),
    (("--out=OUT", "--member=-1"), "--member: must be a whole number of 0 or more"),
])
def test_export_refuses_contradicting_flags_before_reading_anything(flags, expected, tmp_path):
    flags = [f.replace("OUT", str(tmp_path / "release")) for f in flags]
    assert expected in _refused("export", f"--workdir={RELEASE}", *flags)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("flags, expected", [
    ((f"--workdir={RELEASE}", f"--workdir={RELEASE}", "--setting=1", "--output-dir=OUT"),
     "--setting picks members of one --workdir; an ensemble of several takes all members"),
    ((f"--workdir={RELEASE}", "--ensemble-weights=val"), "--ensemble-weights weighs several"),
    ((f"--workdir={RELEASE}", "--output-dir=FILE"), "is a file, not a folder"),
])
def test_evaluate_refuses_contradicting_flags_and_a_file_as_output(flags, expected, tmp_path):
    (tmp_path / "file").write_text("mine")
    flags = [f.replace("OUT", str(tmp_path / "out")).replace("FILE", str(tmp_path / "file"))
             for f in flags]
    assert expected in _refused("evaluate", *flags)
    assert [p.name for p in tmp_path.iterdir()] == ["file"]


def test_compare_output_under_a_file_is_refused(tmp_path):
    (tmp_path / "file").write_text("mine")
    assert "lies under" in _refused("compare", str(tmp_path), f"--output={tmp_path}/file/c.md")


def test_a_huge_sweep_grid_is_refused_in_under_a_second_leaving_no_workdir(tmp_path):
    values = ",".join(str(v) for v in range(1, 301))
    start = time.perf_counter()
    line = _refused_without_help("train", "--model=mlp", "--config.optimizer.name=adamw",
                                 f"--sweep=optimizer.learning_rate={values}",
                                 f"--sweep=optimizer.weight_decay={values}",
                                 f"--workdir={tmp_path / 'run'}")
    assert time.perf_counter() - start < 1.0
    assert "300 x 300 settings x 1 seed(s) = 90,000 members, more than the " in line
    assert not (tmp_path / "run").exists()


def test_a_bad_sweep_value_is_named():
    line = _refused_without_help("train", "--model=mlp", "--sweep=label_smoothing=0,0.1,1.5")
    assert line == ("error: --sweep=label_smoothing value 1.5: config.label_smoothing must lie in "
                    "[0, 1)")


def _refused_without_help(script: str, *args: str) -> str:
    return runs.one_line_error(runs.run_main(script, *args), 2)


def test_a_sweep_of_max_members_passes_its_checks_fast():
    config = cli.config_lib.model_config("mlp")
    start = time.perf_counter()
    sweep.apply(config, ["optimizer.learning_rate=" + ",".join(map(str, range(1, 65))),
                         "label_smoothing=" + ",".join(str(v / 100) for v in range(64))])
    assert len(sweep.member_seeds(config)) == sweep.MAX_MEMBERS
    assert len(sweep.member_hparams(config)[0]["learning_rate"]) == sweep.MAX_MEMBERS
    assert time.perf_counter() - start < 10  # per value, not per setting: was minutes


@pytest.mark.parametrize("text, value", [("1", 1), ("10", 10)])
def test_whole_number_takes_its_range(text, value):
    assert cli.whole_number(1, 10)(text) == value


@pytest.mark.parametrize("text", ["0", "11", "1.5", "", "x"])
def test_whole_number_refuses_outside_its_range(text):
    with pytest.raises(argparse.ArgumentTypeError, match="from 1 to 10"):
        cli.whole_number(1, 10)(text)


def test_output_paths_are_checked_without_writing(tmp_path):
    assert cli.output_dir(str(tmp_path / "a" / "b")) == tmp_path / "a" / "b"
    assert cli.output_file(str(tmp_path / "c.md")) == tmp_path / "c.md"
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(argparse.ArgumentTypeError, match="is a folder"):
        cli.output_file(str(tmp_path))
