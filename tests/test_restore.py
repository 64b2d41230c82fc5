"""Choosing members (`restore.select`): by member, seed and setting, exactly the right slices with
meta, epochs and setting to match, one-line errors; similar items and explanations per member."""

from __future__ import annotations

import json
from pathlib import Path

import chex
import jax
import numpy as np
import pytest

from fmnist_jax import components, data, explain, restore, run, similar, sweep
from fmnist_jax import config as config_lib
from fmnist_jax.errors import UserError

SEEDS = 2  # per setting
SETTINGS = ["optimizer.learning_rate=0.01,0.02,0.03"]
BEST = 1  # the best setting, as summary.json says


def stacked(count: int) -> tuple[dict, dict]:
    """Params and batch_stats whose every entry tells its member apart."""
    values = np.arange(count * 6, dtype=np.float32)
    return ({"Dense_0": {"kernel": values.reshape(count, 2, 3)}},
            {"BatchNorm_0": {"mean": -values.reshape(count, 6)}})


def restored_of(config, workdir: Path, summary: dict | None = None) -> restore.Restored:
    """A Restored of `config`'s members as `load_workdir` returns one, weights made up."""
    seeds = run.seeds_of(config)
    params, batch_stats = stacked(len(seeds))
    meta = {"seeds": seeds, "best_epoch": [10 + m for m in range(len(seeds))]}
    workdir.mkdir(exist_ok=True)
    if summary is not None:
        (workdir / "summary.json").write_text(json.dumps(summary))
    return restore.Restored(workdir, None, config, meta, 7, "best", params, batch_stats,
                            list(meta["best_epoch"]), tuple(range(len(seeds))))


def plain_config(num_seeds: int = 3):
    config = config_lib.model_config("mlp")
    config.seed, config.num_seeds = 5, num_seeds
    return config


def sweep_config():
    config = plain_config(SEEDS)
    sweep.apply(config, SETTINGS)
    return config


@pytest.fixture
def swept(tmp_path) -> restore.Restored:
    """3 settings x 2 seeds (5, 6) = 6 members, setting 1 the best."""
    return restored_of(sweep_config(), tmp_path / "sweep", {"sweep": {"best": {"setting": BEST}}})


@pytest.fixture
def plain(tmp_path) -> restore.Restored:
    return restored_of(plain_config(), tmp_path / "plain")


def assert_holds(selected: restore.Restored, whole: restore.Restored, first: int, stop: int):
    """`selected` is exactly members `first..stop-1` of `whole`, meta and epochs to match."""
    chex.assert_trees_all_close(
        (selected.params, selected.batch_stats),
        jax.tree.map(lambda x: x[first:stop], (whole.params, whole.batch_stats)), rtol=0, atol=0)
    assert selected.members == tuple(range(first, stop))
    assert selected.seeds == whole.seeds[first:stop]
    assert selected.epochs == whole.epochs[first:stop] == selected.meta["best_epoch"]


@pytest.mark.parametrize("member", range(2 * 3))
def test_member_is_that_member_of_the_whole_stack(swept, member):
    selected = restore.select(swept, member=member)
    assert_holds(selected, swept, member, member + 1)
    setting = member // SEEDS
    assert selected.setting == {"index": setting, "values": sweep.settings(swept.config)[setting]}


@pytest.mark.parametrize("setting", range(3))
def test_setting_is_its_seeds_members(swept, setting):
    selected = restore.select(swept, setting=setting)
    assert_holds(selected, swept, SEEDS * setting, SEEDS * (setting + 1))
    assert selected.seeds == [5, 6] and selected.setting["index"] == setting


def test_a_sweep_without_a_choice_is_its_best_settings_members(swept):
    assert_holds(restore.select(swept), swept, SEEDS * BEST, SEEDS * (BEST + 1))


@pytest.mark.parametrize("choice, member", [
    ({"seed": 6}, SEEDS * BEST + 1),  # of the best setting
    ({"seed": 5, "setting": 2}, 4),
])
def test_seed_is_its_member_of_the_setting(swept, choice, member):
    selected = restore.select(swept, **choice)
    assert_holds(selected, swept, member, member + 1)
    assert selected.seeds == [choice["seed"]]


def test_a_plain_run_is_all_its_members_or_those_chosen(plain):
    assert restore.select(plain) is plain
    assert restore.select(plain).setting is None
    assert_holds(restore.select(plain, seed=6), plain, 1, 2)
    assert_holds(restore.select(plain, member=2), plain, 2, 3)


def test_choosing_again_chooses_among_those_chosen(swept):
    setting = restore.select(swept, setting=2)
    assert restore.select(setting) is setting  # one setting already: nothing to choose
    assert_holds(restore.select(setting, member=1), swept, 5, 6)
    assert restore.select(setting, member=1).setting["index"] == 2
    assert_holds(restore.select(setting, seed=5), swept, 4, 5)


def test_variables_are_one_members_unstacked(swept):
    one = restore.select(swept, member=3)
    chex.assert_trees_all_close(one.variables, jax.tree.map(
        lambda x: x[3], {"params": swept.params, "batch_stats": swept.batch_stats}))
    with pytest.raises(ValueError, match="6 members of .* where one is needed; choose it with"):
        _ = swept.variables


@pytest.mark.parametrize("which, choice, message", [
    ("swept", {"setting": 3}, "--setting=3 is not a setting of {}; give one of 0..2 (see its "
                              "sweep.md)"),
    ("swept", {"member": 6}, "--member=6 is not in {}; give one of 0..5"),
    ("swept", {"seed": 7}, "seed 7 is not in {}; its seeds: [5, 6]"),
    ("swept", {"seed": 9, "setting": 0}, "seed 9 is not in {}; its seeds: [5, 6]"),
    ("swept", {"member": 1, "seed": 5}, "--member names one member itself; drop --setting and "
                                        "--seed"),
    ("plain", {"setting": 0}, "{} is not a sweep, so it has no --setting; drop it"),
    ("plain", {"member": 3}, "--member=3 is not in {}; give one of 0..2"),
    ("plain", {"seed": 4}, "seed 4 is not in {}; its seeds: [5, 6, 7]"),
])
def test_a_choice_that_is_not_there_is_one_line(request, which, choice, message):
    restored = request.getfixturevalue(which)
    with pytest.raises(UserError) as error:
        restore.select(restored, **choice)
    assert str(error.value) == message.format(restored.workdir)


def test_an_unfinished_sweep_needs_a_setting(tmp_path):
    unfinished = restored_of(sweep_config(), tmp_path / "unfinished")
    with pytest.raises(UserError, match=r"has not finished, so no setting is chosen yet; give "
                                        r"--setting=K \(0..2\) or finish it"):
        restore.select(unfinished)
    assert_holds(restore.select(unfinished, setting=0), unfinished, 0, 2)


@pytest.fixture(scope="module")
def two_seeds(synthetic_data_dir, tmp_path_factory) -> restore.Restored:
    """A small mlp of two members (seeds 0 and 1, as initialised) on the synthetic data."""
    config = plain_config(2)
    config.seed, config.model.hidden = 0, (16,)
    config.data.dir = str(synthetic_data_dir)
    dataset = data.load_for_config(config)
    parts = components.build(config, len(dataset.train))
    states = components.initial_states(config, parts)
    meta = {"seeds": [0, 1], "class_names": list(dataset.class_names),
            "data": {"mean": dataset.mean, "std": dataset.std, "train_size": len(dataset.train)}}
    return restore.Restored(tmp_path_factory.mktemp("two"), parts.model, config, meta, 3, "best",
                            states.params, states.batch_stats, [1, 1], (0, 1))


def test_each_member_has_its_own_embeddings_and_cache(two_seeds, tmp_path, monkeypatch):
    first, train = similar.cached_training_embeddings(restore.select(two_seeds, member=0), tmp_path)
    second, _ = similar.cached_training_embeddings(restore.select(two_seeds, member=1), tmp_path)
    chex.assert_equal_shape([first, second])
    assert not np.allclose(first, second)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "train-member0.json", "train-member0.npy", "train-member1.json", "train-member1.npy"]
    assert json.loads((tmp_path / "train-member1.json").read_text()) == {
        "step": 3, "checkpoint": "best", "member": 1}
    np.testing.assert_array_equal(similar.embed(two_seeds, train.images), first)  # the first

    def no_second_pass(*_):
        raise AssertionError("the cache was not used")

    monkeypatch.setattr(similar, "embed", no_second_pass)
    again, _ = similar.cached_training_embeddings(restore.select(two_seeds, member=1), tmp_path)
    np.testing.assert_array_equal(again, second)


def test_the_explainer_explains_the_first_member_chosen(two_seeds):
    default = explain.Explainer.from_restored(two_seeds)
    assert (default.member, default.seed) == (0, 0)
    second = explain.Explainer.from_restored(restore.select(two_seeds, seed=1))
    assert (second.member, second.seed) == (1, 1)
    chex.assert_trees_all_close(second.variables, jax.tree.map(
        lambda x: x[1], {"params": two_seeds.params, "batch_stats": two_seeds.batch_stats}))
