"""``imgae`` and its sub-commands, ``imgae-config show / validate / check``, and
property-based tests of the override parser."""

from __future__ import annotations

import argparse
import socket
import subprocess
import sys

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from imgae_dx_jax.__main__ import main as imgae_main
from imgae_dx_jax.cli import (
    config_main,
    config_parser,
    evaluate_parser,
    imgae_parser,
    overrides_from_args,
    predict_parser,
    train_parser,
)
from imgae_dx_jax.config import ConfigError, load_config, parse_override, to_dict


def closed_port() -> str:
    """A loopback URL nothing listens on: connections are refused at once, never leave."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def test_show_prints_the_resolved_yaml(capsys):
    assert config_main(["show", "--set", "data.image_size=32", "--set", "model.name=ae"]) == 0
    shown = yaml.safe_load(capsys.readouterr().out)
    expected = to_dict(load_config(None, ["data.image_size=32", "model.name=ae"]))
    assert shown["data"]["image_size"] == 32 and shown["model"]["name"] == "ae"
    assert shown["train"] == expected["train"]


def test_validate_accepts_good_and_rejects_bad_files(tmp_path, capsys):
    good = tmp_path / "good.yaml"
    good.write_text("model:\n  name: ae\ntrain:\n  epochs: 2\n")
    assert config_main(["validate", str(good)]) == 0
    assert "valid" in capsys.readouterr().out
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  epoch: 2\n")
    assert config_main(["validate", str(bad)]) == 2
    err = capsys.readouterr().err
    assert str(bad) in err and "train.epoch" in err and "Traceback" not in err
    assert config_main(["validate", str(tmp_path / "missing.yaml")]) == 2
    assert "not found" in capsys.readouterr().err
    broken = tmp_path / "broken.yaml"
    broken.write_text("train: [1,\n")
    assert config_main(["validate", str(broken)]) == 2
    assert "not valid YAML" in capsys.readouterr().err
    with pytest.raises(SystemExit) as no_command:
        config_main([])
    assert no_command.value.code == 2


def test_check_reports_missing_credentials_and_offline(tmp_path, monkeypatch, capsys):
    for name in ("KAGGLE_USERNAME", "KAGGLE_KEY", "KAGGLE_API_TOKEN", "WANDB_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(tmp_path / "kaggle"))
    monkeypatch.setenv("NETRC", str(tmp_path / "netrc"))
    url = closed_port()
    args = ["check", "--kaggle-endpoint", url, "--wandb-endpoint", url, "--timeout", "2"]
    assert config_main([*args, "--set", "data.source=kaggle"]) == 0
    out = capsys.readouterr().out
    assert "Kaggle credentials: not found (needed)" in out and "KAGGLE_USERNAME" in out
    assert "Kaggle API: not reachable" in out and "offline or no network" in out
    assert "W&B server: not reachable" in out and "W&B: offline" in out
    assert config_main(["check", "--offline"]) == 0
    assert "not checked (--offline)" in capsys.readouterr().out


_key = st.from_regex(
    r"[A-Za-z_][A-Za-z0-9_]{0,6}(\.[A-Za-z_][A-Za-z0-9_]{0,6}){0,3}", fullmatch=True
)


@settings(max_examples=200, deadline=None)
@given(item=st.text(max_size=40))
def test_parse_override_only_raises_config_errors(item):
    try:
        key, _ = parse_override(item)
    except ConfigError as err:
        assert "--set" in str(err)
        return
    assert "=" in item and key == item.partition("=")[0].strip()


@settings(max_examples=200, deadline=None)
@given(key=_key, value=st.text(max_size=20))
def test_any_override_loads_or_names_the_key(key, value):
    try:
        load_config(None, [f"{key}={value}"])
    except ConfigError as err:
        assert "--set" in str(err)


@settings(max_examples=100, deadline=None)
@given(value=st.floats(min_value=1e-12, max_value=10, allow_nan=False))
def test_float_overrides_round_trip(value):
    for text in (repr(value), f"{value:e}"):
        config = load_config(None, [f"model.ae.learning_rate={text}"])
        assert config.model.ae.learning_rate == pytest.approx(value)


def parsers(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    """``parser`` and every sub-command's parser under it."""
    out = [parser]
    for action in parser._actions:  # argparse keeps sub-commands here; no public accessor
        if isinstance(action, argparse._SubParsersAction):
            for sub in dict.fromkeys(action.choices.values()):
                out += parsers(sub)
    return out


@pytest.mark.parametrize(
    "make", [imgae_parser, train_parser, evaluate_parser, predict_parser, config_parser]
)
def test_every_flag_of_every_command_has_help(make):
    for parser in parsers(make()):
        for action in parser._actions:
            name = "/".join(action.option_strings) or action.dest
            assert action.help and action.help.strip(), f"{parser.prog} {name} has no help"
            for choice in getattr(action, "_choices_actions", []):
                assert choice.help and choice.help.strip(), f"{parser.prog} {choice.dest}"


def test_every_description_is_whole_sentences():
    for parser in parsers(imgae_parser()):
        texts = [parser.description, *(group.description for group in parser._action_groups)]
        for text in filter(None, texts):
            assert text.endswith("."), f"{parser.prog}: {text!r} is cut short"


def test_imgae_has_the_four_commands_with_the_arguments_of_each_imgae_x():
    top = imgae_parser()
    subs = {p.prog: p for p in parsers(top)}
    assert {"imgae train", "imgae evaluate", "imgae predict", "imgae config"} <= subs.keys()
    assert {"imgae config show", "imgae config validate", "imgae config check"} <= subs.keys()
    for name, same in [
        ("train", train_parser()),
        ("evaluate", evaluate_parser()),
        ("predict", predict_parser()),
        ("config", config_parser()),
    ]:
        assert [a.option_strings for a in subs[f"imgae {name}"]._actions] == [
            a.option_strings for a in same._actions
        ]
    with pytest.raises(SystemExit) as no_command:
        top.parse_args([])
    assert no_command.value.code == 2


def test_max_steps_sets_the_step_budget():
    for args in (
        train_parser().parse_args(["--max-steps", "7"]),
        imgae_parser().parse_args(["train", "--max-steps", "7"]),
    ):
        assert load_config(overrides=overrides_from_args(args)).train.max_steps == 7
    assert not any(
        o.startswith("train.max_steps") for o in overrides_from_args(train_parser().parse_args([]))
    )


def test_imgae_config_show_prints_the_resolved_config_as_imgae_config_does(capsys):
    args = ["show", "--config", "colab_gpu", "--set", "train.epochs=3"]
    assert config_main(args) == 0
    expected = capsys.readouterr().out
    assert imgae_main(["config", *args]) == 0
    shown = capsys.readouterr().out
    assert shown == expected and yaml.safe_load(shown)["train"]["epochs"] == 3


def test_imgae_runs_each_command_and_reports_its_errors(tmp_path, capsys):
    assert imgae_main(["train", "--set", "train.epoch=2"]) == 2
    err = capsys.readouterr().err
    assert "imgae: error:" in err and "train.epoch" in err and "Traceback" not in err
    assert imgae_main(["evaluate", "--run", str(tmp_path / "nowhere")]) == 2
    assert "imgae: error:" in capsys.readouterr().err
    assert imgae_main(["predict", str(tmp_path / "missing.png"), "--run", str(tmp_path)]) == 2
    assert "missing.png: no such file" in capsys.readouterr().err


def test_unusable_cache_dir_is_one_error_line(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "file").write_text("")
    cache = tmp_path / "file" / "cache"
    assert imgae_main(["train", "--max-steps", "2", "--cache-dir", str(cache)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"imgae: error: cannot write the JAX compilation cache in {cache}")
    assert err.count("\n") == 1 and "Traceback" not in err
    assert [p.name for p in tmp_path.iterdir()] == ["file"]  # no run directory made


@pytest.mark.parametrize(
    ("module", "prog"),
    [
        ("imgae_dx_jax", "imgae"),
        ("imgae_dx_jax.train", "imgae-train"),
        ("imgae_dx_jax.evaluate", "imgae-evaluate"),
        ("imgae_dx_jax.predict", "imgae-predict"),
    ],
)
def test_python_m_entry_points(module, prog):
    shown = subprocess.run(
        [sys.executable, "-m", module, "--help"], capture_output=True, text=True, check=True
    )
    assert shown.stdout.startswith(f"usage: {prog} ")
