"""imgae-predict on PNG, JPEG and RGBA files of any size, with an exported (untrained) model."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import numpy as np
import pytest
from flax import nnx
from PIL import Image

from imgae_dx_jax import distributed
from imgae_dx_jax import run_dir as rundir
from imgae_dx_jax.checkpoints import export_model, restore_model
from imgae_dx_jax.config import load_config
from imgae_dx_jax.data.images import decode_image
from imgae_dx_jax.errors import PredictError
from imgae_dx_jax.families import create_model
from imgae_dx_jax.inference import Scorer
from imgae_dx_jax.predict import find_images, predict
from imgae_dx_jax.predict import main as predict_main


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A run directory with an inference export and a threshold, as evaluation leaves it."""
    run = tmp_path_factory.mktemp("run")
    config = load_config(
        overrides=[
            "model.unet.widths=[8,16]",
            "model.unet.groups=4",
            "data.image_size=32",
            "eval.batch_size=4",
        ]
    )
    model = create_model(config.model, config.data.image_size, rngs=nnx.Rngs(0))
    export_model(run, config, distributed.to_host(nnx.state(model)))
    (run / "export" / "threshold.json").write_text(json.dumps({"threshold": 0.3, "map_scale": 0.5}))
    return run


@pytest.fixture()
def images(tmp_path):
    rng = np.random.default_rng(0)
    folder = tmp_path / "in"
    (folder / "sub").mkdir(parents=True)
    Image.fromarray(rng.integers(0, 255, (100, 80), dtype=np.uint8), "L").save(folder / "a.png")
    Image.fromarray(rng.integers(0, 255, (120, 200, 3), dtype=np.uint8), "RGB").save(
        folder / "sub" / "b.jpg", quality=90
    )
    Image.fromarray(rng.integers(0, 255, (64, 64, 4), dtype=np.uint8), "RGBA").save(
        folder / "c.png"
    )
    (folder / "broken.png").write_bytes(b"not an image")
    (folder / "notes.txt").write_text("ignored")
    return folder


def test_predict_png_jpeg_rgba_and_a_broken_file(run_dir, images, tmp_path):
    out = tmp_path / "out"
    results = predict([images], run_dir, out)
    by_name = {p.path.name: p for p in results}
    assert sorted(by_name) == ["a.png", "b.jpg", "broken.png", "c.png"]
    assert by_name["broken.png"].error and by_name["broken.png"].overlay is None
    for name, size in (("a.png", (80, 100)), ("b.jpg", (200, 120)), ("c.png", (64, 64))):
        p = by_name[name]
        assert p.error is None and np.isfinite(p.score)
        assert p.abnormal == (p.score >= 0.3)
        with Image.open(p.overlay) as overlay:
            assert overlay.mode == "RGB"
            assert overlay.width == size[0] and overlay.height == size[1] + 18  # + caption strip
    with (out / "predictions.csv").open() as f:
        rows = {row["image"].rsplit("/", 1)[-1]: row for row in csv.DictReader(f)}
    assert rows["broken.png"]["error"] and not rows["broken.png"]["score"]
    assert rows["a.png"]["prediction"] in ("normal", "abnormal")
    assert float(rows["a.png"]["threshold"]) == pytest.approx(0.3)


def test_predict_uses_the_score_chosen_on_validation(run_dir, images, tmp_path):
    """The calibration's image score (here top5 of the median-filtered map) is what predict uses."""
    config = rundir.load_export_config(run_dir)
    model = restore_model(run_dir, config)
    path = run_dir / "export" / "threshold.json"
    saved = path.read_text()
    calibration = rundir.Calibration(0.3, 0.5, "top5", "maximum F1", {})
    rundir.write_calibration(run_dir, calibration, n_val_images=4)
    try:
        (result,) = predict([images / "a.png"], run_dir, tmp_path / "out")
    finally:
        path.write_text(saved)
    image = decode_image((images / "a.png").read_bytes(), config.data.image_size)[None, ..., None]
    expected = Scorer(model, config).select("top5")(image)
    assert result.score == pytest.approx(float(expected.scores[0]), rel=1e-6)
    assert result.score != pytest.approx(float(expected.candidates[0, 0]), rel=1e-6)  # not mean


def test_same_names_in_different_folders_get_distinct_overlays(run_dir, images, tmp_path):
    other = tmp_path / "other"
    other.mkdir()
    (other / "a.png").write_bytes((images / "a.png").read_bytes())
    results = predict([images / "a.png", other / "a.png"], run_dir, tmp_path / "out")
    assert len({p.overlay for p in results}) == 2


def test_predict_cli_and_its_errors(run_dir, images, tmp_path, capsys):
    out = tmp_path / "cli"
    assert (
        predict_main(
            [str(images / "a.png"), str(images / "c.png"), "--run", str(run_dir), "--out", str(out)]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "2 images:" in printed and (out / "predictions.csv").is_file()

    assert predict_main([str(tmp_path / "missing.png"), "--run", str(run_dir)]) == 2
    err = capsys.readouterr().err
    assert "no such file" in err and "Traceback" not in err
    assert predict_main([str(images / "broken.png"), "--run", str(run_dir), "--out", str(out)]) == 2
    assert "could be read" in capsys.readouterr().err
    unevaluated = tmp_path / "unevaluated"
    (unevaluated / "export").mkdir(parents=True)
    (unevaluated / "export" / "config.yaml").write_text(
        (run_dir / "export" / "config.yaml").read_text()
    )
    assert predict_main([str(images), "--run", str(unevaluated)]) == 2
    assert "imgae-evaluate" in capsys.readouterr().err


def test_an_out_that_is_a_file_fails_before_the_model_is_loaded(
    run_dir, images, tmp_path, capsys, monkeypatch
):
    def no_work(*args):
        raise AssertionError("work was done before --out was checked")

    monkeypatch.setattr("imgae_dx_jax.predict.setup_compilation_cache", no_work)
    monkeypatch.setattr("imgae_dx_jax.predict.restore_model", no_work)
    out = tmp_path / "taken"
    out.write_text("")
    assert predict_main([str(images / "a.png"), "--run", str(run_dir), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"imgae-predict: error: cannot write to {out}: ")
    assert err.count("\n") == 1 and "Traceback" not in err


def test_find_images_needs_an_image(tmp_path):
    (tmp_path / "x.txt").write_text("x")
    with pytest.raises(PredictError, match=r"no \.png"):
        find_images([tmp_path])


def test_a_dangling_symlink_is_found_so_that_it_is_reported(tmp_path):
    (tmp_path / "a.png").write_bytes(b"x")
    (tmp_path / "gone.png").symlink_to(tmp_path / "missing.png")
    (tmp_path / "notes.txt").symlink_to(tmp_path / "missing.txt")
    assert [p.name for p in find_images([tmp_path])] == ["a.png", "gone.png"]


@pytest.mark.parametrize(
    "module", ["imgae_dx_jax.predict", "imgae_dx_jax.cli", "imgae_dx_jax.__main__"]
)
def test_predict_entry_imports_neither_pyplot_nor_the_evaluator(module):
    code = (
        f"import sys, {module}; "
        "heavy = ['matplotlib.pyplot', 'imgae_dx_jax.evaluation', 'imgae_dx_jax.evaluate', "
        "'imgae_dx_jax.api', 'imgae_dx_jax.training']; "
        "print([m for m in heavy if m in sys.modules])"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"


def test_imgae_predict_imports_neither_pyplot_nor_the_evaluator(tmp_path):
    code = (
        "import sys; from imgae_dx_jax.__main__ import main; "
        f"code = main(['predict', {str(tmp_path / 'x.png')!r}, '--run', {str(tmp_path)!r}]); "
        "heavy = ['matplotlib.pyplot', 'imgae_dx_jax.evaluation', 'imgae_dx_jax.evaluate', "
        "'imgae_dx_jax.api', 'imgae_dx_jax.training']; "
        "print(code, 'imgae_dx_jax.predict' in sys.modules, [m for m in heavy if m in sys.modules])"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "2 True []"  # predict ran (and refused the missing file)


def test_a_second_prediction_does_not_score_the_first_ones_overlays(run_dir, images):
    out = images / "predictions"  # below the input folder, as `imgae-predict .` leaves it
    first = predict([images], run_dir, out)
    second = predict([images], run_dir, out)
    assert [p.path for p in second] == [p.path for p in first]
    assert not any(p.path.is_relative_to(out) for p in second)
    # A file named explicitly is still scored, wherever it lies; an --out that is the input
    # folder itself hides nothing.
    (explicit,) = predict([out / "a_overlay.png"], run_dir, images / "again")
    assert explicit.error is None
    assert len(predict([out], run_dir, out)) == len(first) - 1  # broken.png makes no overlay
