from __future__ import annotations

import re

import pytest

from imgae_dx_jax.config import ConfigError, from_dict, load_config, parse_override, to_dict


def test_defaults_load_and_round_trip():
    config = load_config()
    assert config.model.name == "ae"
    assert config.data.stages == ("images_001",)
    assert config.model.unet.widths == (32, 64, 128, 256)
    assert from_dict(to_dict(config), "test") == config


def test_overrides_apply_in_order_and_coerce_types():
    config = load_config(
        overrides=[
            "train.epochs=3",
            "model.ra.learning_rate=1e-4",
            "data.stages=[images_001,images_002]",
        ]
    )
    assert config.train.epochs == 3
    # YAML reads 1e-4 (no dot) as a string; numeric strings are accepted for floats.
    assert config.model.ra.learning_rate == pytest.approx(1e-4)
    assert config.data.stages == ("images_001", "images_002")


@pytest.mark.parametrize(
    ("override", "fragment"),
    [
        ("train.epoch=3", "unknown key 'train.epoch'"),
        ("train.epochs=three", "train.epochs: expected an integer"),
        ("model.ra.beta_kl=lots", "model.ra.beta_kl: expected a number"),
        ("data.image_size=60", "divisible by 2^4"),
        ("model.name=vae", "unknown model 'vae'"),
        ("data.stages=[images_013]", "unknown stage 'images_013'"),
        ("data.stages=all", "or --stage all on the command line"),
        ("data.stages=[]", "at least one stage is needed"),
        ("data.source=archive", "needs data.path"),
        ("data.split=[0.5,0.5]", "data.split"),
        ("eval.score=top3", "eval.score: unknown score 'top3'; choose one of auto, mean"),
        ("train.optimizer=sgd", "train.optimizer: unknown optimizer 'sgd'; choose one of adam"),
        ("model.ra.anomaly_map=lpips", "model.ra.anomaly_map: unknown map 'lpips'"),
        ("eval.threshold=accuracy", "eval.threshold: unknown rule 'accuracy'"),
        ("eval.target_specificity=1", "eval.target_specificity: must be in (0, 1)"),
        ("model.ra.validations_per_epoch=0", "model.ra.validations_per_epoch: must be >= 1"),
        ("model.unet.groups=0", "model.unet.groups: must be >= 1"),
        ("model.unet.groups=-8", "model.unet.groups: must be >= 1"),
        ("model.ae.learning_rate=.nan", "model.ae.learning_rate: expected a finite number"),
        ("data.timeout=.inf", "data.timeout: expected a finite number"),
    ],
)
def test_bad_overrides_name_the_key_and_origin(override, fragment):
    with pytest.raises(ConfigError) as info:
        load_config(overrides=[override])
    assert fragment in str(info.value)
    assert "--set" in str(info.value)


def test_a_directory_is_not_a_config_file(tmp_path):
    with pytest.raises(ConfigError, match="is a directory; give a YAML file"):
        load_config(str(tmp_path))


def test_user_file_layers_over_defaults(tmp_path):
    path = tmp_path / "ra.yaml"
    path.write_text("model:\n  name: ra\ntrain:\n  epochs: 2\n")
    config = load_config(str(path), ["train.epochs=4"])
    assert (config.model.name, config.train.epochs, config.train.batch_size) == ("ra", 4, 16)


def test_parse_override_rejects_missing_equals():
    with pytest.raises(ConfigError):
        parse_override("train.epochs")
    assert parse_override("a.b=[1, 2]") == ("a.b", [1, 2])


@pytest.mark.parametrize(
    ("content", "pattern"),
    [
        (b"train:\n  batchsize: 8\n", r"unknown key 'train\.batchsize'"),
        ("# \u00dcberblick\ntrain:\n  epochs: 2\n".encode("latin-1"), r"not UTF-8 text \(byte 2\)"),
        # PyYAML keeps a repeated key's last value: the second train: would drop the first.
        (
            b"train:\n  epochs: 3\nmodel:\n  name: unet\ntrain:\n  batch_size: 8\n",
            r"key 'train' given twice(.|\n)*line 5",
        ),
    ],
)
def test_a_bad_config_file_is_named_with_what_is_wrong(tmp_path, content, pattern):
    path = tmp_path / "mine.yaml"
    path.write_bytes(content)
    with pytest.raises(ConfigError) as info:
        load_config(str(path))
    assert str(info.value).startswith(f"{path}:") and re.search(pattern, str(info.value))
