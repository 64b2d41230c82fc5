"""The command of the package (`fmnist-jax COMMAND`), its scripts, and the packaged configs."""

from __future__ import annotations

import ast

import pytest

from conftest import ROOT
from fmnist_jax import cli, commands
from fmnist_jax import config as config_lib
from fmnist_jax.errors import ConfigError


@pytest.mark.parametrize("name", list(commands.COMMANDS))
def test_every_command_has_a_module_and_a_thin_script(name):
    module = commands.module(name)
    assert callable(module.main) and module.__doc__
    script = (ROOT / "scripts" / f"{name}.py").read_text()
    assert "sys.path" not in script and f'run("{name}")' in script
    assert len([n for n in ast.parse(script).body if not isinstance(n, ast.Expr)]) == 2


def test_an_unknown_command_is_one_line_and_exit_2(capsys):
    with pytest.raises(SystemExit) as exit_info:
        commands.main(["trian", "--model=mlp"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: unknown command 'trian'") and len(err.splitlines()) == 1


def test_no_command_lists_them_all(capsys):
    commands.main([])
    out = capsys.readouterr().out
    assert all(f"  {name} " in out for name in commands.COMMANDS)


def test_a_command_runs_its_module_with_the_error_guard(capsys):
    with pytest.raises(SystemExit) as exit_info:
        commands.main(["train", "--model=vgg"])
    assert exit_info.value.code == 2
    assert "invalid choice: 'vgg'" in capsys.readouterr().err


@pytest.mark.parametrize("argv0, recorded", [
    ("/venv/bin/fmnist-jax", "fmnist-jax train --seeds=4"),
    ("/src/fmnist_jax/__main__.py", "python -m fmnist_jax train --seeds=4"),
])
def test_the_recorded_command_is_the_one_typed(monkeypatch, argv0, recorded):
    monkeypatch.setattr("sys.argv", [argv0, "train", "--seeds=4"])
    for name in cli.DEVICE_ENV:
        monkeypatch.delenv(name, raising=False)
    assert cli.command_line() == recorded


def test_packaged_configs_are_found_by_their_documented_path_from_any_folder(tmp_path,
                                                                              monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert config_lib.find_config_file("configs/tuned/cnn.py") == (
        config_lib.CONFIG_DIR / "tuned" / "cnn.py")
    assert config_lib.load_config_file("configs/tuned/cnn.py").augment.flip
    mine = tmp_path / "configs" / "tuned" / "cnn.py"  # a file of that path here wins
    mine.parent.mkdir(parents=True)
    mine.write_text("from fmnist_jax.config import model_config\n\n\ndef get_config():\n"
                    "    return model_config('mlp')\n")
    assert config_lib.load_config_file("configs/tuned/cnn.py").model.name == "mlp"
    with pytest.raises(ConfigError, match="config file configs/tuned/nope.py not found"):
        config_lib.load_config_file("configs/tuned/nope.py")


def test_the_default_workdir_is_under_the_current_folder():
    assert str(cli.default_workdir("cnn")).startswith("checkpoints/cnn-")
