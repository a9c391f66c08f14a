"""The notebooks: generated from scripts/generate_notebooks.py, guarded, and the quickstart runs.

The quickstart is executed headlessly with nbclient in a kernel of *this* interpreter (a
temporary kernelspec on JUPYTER_PATH), with tiny settings injected after its ``parameters``
cell the way papermill does it.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import os
import stat
import sys
from pathlib import Path

import pytest

from imgae_dx_jax.config import load_config

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOKS = ROOT / "notebooks"
GENERATOR = ROOT / "scripts" / "generate_notebooks.py"

nbformat = pytest.importorskip("nbformat", reason="pip install '.[notebooks]'")

# Tiny models. Compiling dominates (the RA step takes tens of seconds to compile on a CPU even
# when tiny): the plain layers (fast_path=never, same math) and XLA's cheapest backend
# optimisation level (XLA_FLAGS below) halve that, and only 3 steps run.
TINY_PARAMETERS = {
    "MODELS": ["unet", "ra"],
    "EPOCHS": 1,
    "IMAGE_SIZE": 32,
    "BATCH_SIZE": 8,
    "MAX_STEPS": 3,
    "SETTINGS": [
        "model.unet.widths=[8,16]",
        "model.unet.groups=4",
        "model.ra.widths=[8,16,16]",
        "model.ra.zdim=16",
        "model.fast_path=never",
        "train.log_every=1",
    ],
    "WANDB": "disabled",
}


def _generator():
    spec = importlib.util.spec_from_file_location("generate_notebooks", GENERATOR)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def generated():
    """Notebook file name -> the notebook the generator produces now."""
    return _generator().build_all()


def _code_cells(nb):
    return [cell for cell in nb.cells if cell.cell_type == "code"]


def _markdown(nb) -> str:
    return "\n".join(cell.source for cell in nb.cells if cell.cell_type == "markdown")


def test_committed_notebooks_match_the_generator(generated):
    committed = {p.name for p in NOTEBOOKS.glob("*.ipynb")}
    assert committed == set(generated), "run: python scripts/generate_notebooks.py"
    for name, nb in generated.items():
        on_disk = json.loads((NOTEBOOKS / name).read_text())
        fresh = json.loads(_generator().serialize(nb))
        assert on_disk == fresh, f"{name} is stale: run python scripts/generate_notebooks.py"


def test_generation_is_deterministic(generated):
    again = _generator().build_all()
    serialize = _generator().serialize
    for name, nb in generated.items():
        assert serialize(nb) == serialize(again[name])
        ids = [cell.id for cell in nb.cells]
        assert len(set(ids)) == len(ids)
        assert all(not cell.get("outputs") for cell in nb.cells)
        nbformat.validate(nb)


def test_every_notebook_is_parameterised_and_checks_its_runtime(generated):
    for name, nb in generated.items():
        tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
        assert len(tagged) == 1, name
        values = {}
        exec(tagged[0].source, {}, values)  # plain assignments only
        for key in ("MODELS", "STAGES", "EPOCHS", "IMAGE_SIZE", "BATCH_SIZE", "MAX_STEPS"):
            assert key in values, (name, key)
        code = "\n".join(c.source for c in _code_cells(nb))
        assert "jax.devices()" in code, name
        text = _markdown(nb)
        assert "**Runtime:**" in text and "**Full dataset:**" in text, name
        for cell in _code_cells(nb):
            ast.parse(cell.source)  # no IPython magics: every cell is plain Python


GUARDED = {"google.colab": "IN_COLAB", "kaggle_secrets": "IN_KAGGLE"}


def _unguarded_imports(tree: ast.AST) -> list[str]:
    """Imports of Colab/Kaggle-only modules not nested in ``if IN_COLAB``/``if IN_KAGGLE``."""
    bad = []

    def visit(node: ast.AST, guards: tuple[str, ...]) -> None:
        if isinstance(node, ast.If):
            guards = (*guards, ast.unparse(node.test))
        modules = []
        if isinstance(node, ast.Import):
            modules = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            modules = [node.module or ""]
        for module in modules:
            for prefix, flag in GUARDED.items():
                if module.startswith(prefix) and not any(flag in g for g in guards):
                    bad.append(module)
        for child in ast.iter_child_nodes(node):
            visit(child, guards)

    visit(tree, ())
    return bad


def test_colab_and_kaggle_only_code_is_guarded(generated):
    for name, nb in generated.items():
        for cell in _code_cells(nb):
            assert not _unguarded_imports(ast.parse(cell.source)), (name, cell.id)


def test_kaggle_json_from_drive_is_saved_owner_only(generated, tmp_path, monkeypatch):
    nb = generated["nih_progressive_colab.ipynb"]
    (cell,) = [c for c in _code_cells(nb) if "def kaggle_credentials" in c.source]
    for var in ("KAGGLE_USERNAME", "KAGGLE_KEY", "KAGGLE_API_TOKEN"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(tmp_path / "kaggle-config"))
    drive = tmp_path / "drive"
    drive.mkdir()
    token = b'{"username": "someone", "key": "0123"}'
    (drive / "kaggle.json").write_bytes(token)
    namespace = {"os": os, "Path": Path, "IN_COLAB": False, "DRIVE_ROOT": str(drive)}
    exec(cell.source, namespace | {"SOURCE": "kaggle"})
    saved = tmp_path / "kaggle-config" / "kaggle.json"
    assert saved.read_bytes() == token
    assert stat.S_IMODE(saved.stat().st_mode) == 0o600

    saved.unlink()
    (drive / "kaggle.json").unlink()
    with pytest.raises(RuntimeError, match="No Kaggle credentials"):
        exec(cell.source, namespace | {"SOURCE": "kaggle"})


def _cell_index(nb, text: str) -> int:
    return next(i for i, c in enumerate(nb.cells) if c.cell_type == "code" and text in c.source)


def test_package_is_empty_and_drive_is_mounted_before_the_install(generated):
    for name, nb in generated.items():
        (parameters,) = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
        values = {}
        exec(parameters.source, {}, values)
        assert values["PACKAGE"] == "", name  # nothing is installed by name from the index
        assert "def package_requirement" in nb.cells[_cell_index(nb, "WHEELS = ")].source, name
    colab = generated["nih_progressive_colab.ipynb"]
    install = _cell_index(colab, "def package_requirement")
    assert _cell_index(colab, 'drive.mount("/content/drive")') < install
    assert 'ROOT / "wheels"' in colab.cells[install].source


def test_install_cell_picks_package_then_newest_wheel_else_one_message(generated, tmp_path):
    nb = generated["nih_kaggle_notebook.ipynb"]
    namespace = {"PACKAGE": ""}
    # The package is installed here, so the cell only defines its helpers and prints the version.
    exec(nb.cells[_cell_index(nb, "def package_requirement")].source, namespace)
    requirement = namespace["package_requirement"]
    patterns = [str(tmp_path / "a" / "*.whl"), str(tmp_path / "b" / "*.whl")]
    with pytest.raises(namespace["InstallError"]) as error:
        requirement("", patterns)
    assert error.value._render_traceback_() == [f"InstallError: {error.value}"]
    assert "PACKAGE" in str(error.value) and "hatch run dist" in str(error.value)
    assert requirement("git+https://example.org/x.git", patterns) == "git+https://example.org/x.git"
    old, new = (
        tmp_path / "a" / "imgae_dx_jax-0.1.0-py3-none-any.whl",
        tmp_path / "b" / ("imgae_dx_jax-0.2.0-py3-none-any.whl"),
    )
    for path, mtime in ((old, 1_000_000), (new, 2_000_000)):
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(b"")
        os.utime(path, (mtime, mtime))
    (tmp_path / "b" / "other_package-9.0-py3-none-any.whl").write_bytes(b"")
    assert requirement("", patterns) == str(new)
    os.utime(old, (3_000_000, 3_000_000))
    assert requirement("", patterns) == str(old)


@pytest.mark.parametrize("name", ["colab_gpu", "colab_tpu", "nih_kaggle"])
@pytest.mark.parametrize("model", ["unet", "ra", "ae"])
def test_ready_configs_load(name, model):
    config = load_config(name, [f"model.name={model}"])
    assert config.data.image_size == 128
    assert config.train.batch_size % 8 == 0  # TPU v2-8/v3-8 cores, 2 GPUs of Kaggle's T4 x2
    if name.startswith("colab"):
        assert config.data.source == "kaggle"
        assert config.data.cache_dir.startswith("/content/drive/MyDrive/")
        assert config.run.root.startswith("/content/drive/MyDrive/")
    else:
        assert (config.data.source, config.data.path) == ("folder", "/kaggle/input/data")


def _kernelspec(directory: Path) -> str:
    """A kernelspec running ipykernel in this interpreter; returns its name."""
    spec = directory / "kernels" / "imgae-test-python"
    spec.mkdir(parents=True)
    argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    spec.joinpath("kernel.json").write_text(
        json.dumps({"argv": argv, "display_name": "imgae test", "language": "python"})
    )
    return spec.name


@pytest.mark.slow
def test_quickstart_executes_on_the_sample(tmp_path, monkeypatch):
    nbclient = pytest.importorskip("nbclient", reason="pip install '.[notebooks]'")
    pytest.importorskip("ipykernel", reason="pip install '.[notebooks]'")
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    monkeypatch.setenv("IPYTHONDIR", str(tmp_path / "ipython"))
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    flags = os.environ.get("XLA_FLAGS", "")
    monkeypatch.setenv("XLA_FLAGS", f"{flags} --xla_backend_optimization_level=0".strip())
    kernel = _kernelspec(tmp_path / "jupyter")

    nb = nbformat.read(NOTEBOOKS / "quickstart.ipynb", as_version=4)
    index = next(i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", []))
    parameters = TINY_PARAMETERS | {"RUN_ROOT": str(tmp_path / "runs")}
    injected = nbformat.v4.new_code_cell(
        "\n".join(f"{key} = {value!r}" for key, value in parameters.items())
    )
    injected.metadata["tags"] = ["injected-parameters"]
    nb.cells.insert(index + 1, injected)

    client = nbclient.NotebookClient(
        nb,
        kernel_name=kernel,
        timeout=600,
        resources={"metadata": {"path": str(tmp_path)}},
    )
    client.execute()

    outputs = [out for cell in nb.cells for out in cell.get("outputs", [])]
    images = [out for out in outputs if "image/png" in out.get("data", {})]
    assert len(images) >= 3  # ROC + one reconstruction grid per model
    tables = [
        out["data"]["text/markdown"] for out in outputs if "text/markdown" in out.get("data", {})
    ]
    assert any("AUROC" in table and "| unet" in table for table in tables)
    report = tmp_path / "runs" / "report"
    metrics = json.loads((report / "metrics.json").read_text())
    assert set(metrics["models"]) == {"unet", "ra"}
    assert (report / "report.html").is_file()
    for model in ("unet", "ra"):
        assert (tmp_path / "runs" / model / "export").is_dir()
