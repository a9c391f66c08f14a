"""The notebooks: generated from notebooks/src, guarded, and they all run.

scripts/generate_notebooks.py makes each ``notebooks/<name>.ipynb`` from its percent-format
source ``notebooks/src/<name>.py`` (tests/unit/test_notebook_sources.py tests that parser).

The quickstart is executed headlessly with nbclient in a kernel of *this* interpreter (a
temporary kernelspec on JUPYTER_PATH), with tiny settings injected after its ``parameters``
cell the way papermill does it. The Colab and Kaggle notebooks run the same way but in a
kernel of a fresh venv without the package, so that their install cells pip-install the
freshly built wheel from a simulated Drive or Kaggle input folder.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import os
import shutil
import stat
import sys
import zipfile
from pathlib import Path

import pytest
from venvs import ROOT, fresh_venv, uv_install, uv_uninstall, venv_environment

from imgae_dx_jax.config import load_config

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
    namespace = {"PACKAGE": "", "INPUT_DIR": "/kaggle/input"}
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


def _kernelspec(directory: Path, python: str = sys.executable, env: dict | None = None) -> str:
    """A kernelspec running ipykernel in ``python`` (this interpreter), with ``env`` added to
    the environment; returns its name."""
    spec = directory / "kernels" / "imgae-test-python"
    spec.mkdir(parents=True)
    argv = [python, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    kernel = {"argv": argv, "display_name": "imgae test", "language": "python"}
    spec.joinpath("kernel.json").write_text(json.dumps(kernel | ({"env": env} if env else {})))
    return spec.name


def _inject(nb, parameters: dict) -> None:
    """Insert ``parameters`` as a cell after the ``parameters`` cell (papermill's convention)."""
    index = next(i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", []))
    injected = nbformat.v4.new_code_cell(
        "\n".join(f"{key} = {value!r}" for key, value in parameters.items())
    )
    injected.metadata["tags"] = ["injected-parameters"]
    nb.cells.insert(index + 1, injected)


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
    _inject(nb, TINY_PARAMETERS | {"RUN_ROOT": str(tmp_path / "runs")})

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


# ---------------------------------------------------------------------------------------------
# The Colab and Kaggle notebooks, from their install cell on, in a fresh venv

SAMPLE = ROOT / "imgae_dx_jax" / "assets" / "nih-chest-xrays-sample.zip"
# The tiny models of the quickstart, one model per notebook, on stage images_001 only.
TINY_NIH = TINY_PARAMETERS | {
    "STAGES": ["images_001"],
    "SETTINGS": [*TINY_PARAMETERS["SETTINGS"], "model.ae.widths=[8,16,32]"],
    "ALLOW_CPU": True,
}
# Printed by a cell appended to the notebook: where the kernel imported the package from.
WHERE = "import json, sys, imgae_dx_jax\nprint(json.dumps([sys.prefix, imgae_dx_jax.__file__]))"


def _simulated_drive(tmp_path: Path, wheel: Path) -> tuple[dict, Path, Path]:
    """Colab: DRIVE_ROOT a local folder holding wheels/ (as the notebook's docs say to upload
    it) and a Kaggle-layout archive; returns the parameters, the copied wheel, the run root."""
    drive = tmp_path / "drive" / "MyDrive" / "imgae_dx_jax"
    (drive / "wheels").mkdir(parents=True)
    shutil.copy2(wheel, drive / "wheels")
    shutil.copy2(SAMPLE, drive / "archive.zip")  # the `archive` source: a local Kaggle ZIP
    parameters = {
        "MODELS": ["unet"],
        "DRIVE_ROOT": str(drive),
        "SOURCE": "archive",
        "DATA": str(drive / "archive.zip"),
    }
    return parameters, drive / "wheels" / wheel.name, drive / "runs" / "nih"


def _simulated_kaggle_input(tmp_path: Path, wheel: Path) -> tuple[dict, Path, Path]:
    """Kaggle: INPUT_DIR a local folder holding the wheel as an uploaded dataset and the
    extracted NIH data (the sample), found by the notebook (DATA_DIR empty)."""
    inputs = tmp_path / "kaggle" / "input"
    (inputs / "imgae-dx-jax-wheel").mkdir(parents=True)
    shutil.copy2(wheel, inputs / "imgae-dx-jax-wheel")
    with zipfile.ZipFile(SAMPLE) as archive:
        archive.extractall(inputs / "data")
    work = tmp_path / "kaggle" / "working" / "imgae_dx_jax"
    parameters = {
        "MODELS": ["ae"],
        "INPUT_DIR": str(inputs),
        "DATA_DIR": "",
        "WORK_DIR": str(work),
        "CACHE_DIR": str(tmp_path / "kaggle" / "tmp-cache"),
    }
    return parameters, inputs / "imgae-dx-jax-wheel" / wheel.name, work / "runs" / "nih"


@pytest.fixture(scope="module")
def kernel_venv(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv with pip, ipykernel and the wheel's dependencies but not the package: what
    the install cell meets on Colab or Kaggle (pip, and most dependencies preinstalled).

    uv installs the wheel from its cache (offline when warm) and removes the package again, so
    the notebook's pip only adds the package itself and needs no index (PIP_NO_INDEX below).
    """
    pytest.importorskip("nbclient", reason="pip install '.[notebooks]'")
    venv = tmp_path_factory.mktemp("kernel") / "venv"
    python = fresh_venv(venv, pip=True)
    uv_install(python, str(wheel), "ipykernel")
    uv_uninstall(python, "imgae-dx-jax")
    return venv


@pytest.mark.slow
@pytest.mark.parametrize(
    ("name", "simulate"),
    [
        ("nih_progressive_colab.ipynb", _simulated_drive),
        ("nih_kaggle_notebook.ipynb", _simulated_kaggle_input),
    ],
)
def test_notebook_installs_the_wheel_and_runs(
    name, simulate, kernel_venv, wheel, generated, tmp_path, monkeypatch
):
    nbclient = pytest.importorskip("nbclient", reason="pip install '.[notebooks]'")
    # The install cell adds the JAX plugin of the machine's accelerator from the index.
    install = generated["nih_kaggle_notebook.ipynb"]
    namespace = {"PACKAGE": "", "INPUT_DIR": "/kaggle/input"}
    exec(install.cells[_cell_index(install, "def package_requirement")].source, namespace)
    if namespace["machine_accelerator"]() != "cpu":
        pytest.skip("an accelerator: the install cell would pip install its JAX plugin")
    (site_packages,) = kernel_venv.glob("lib/python*/site-packages")
    assert not list(site_packages.glob("imgae_dx_jax*")), "the package is already installed"

    for var in ("PYTHONPATH", "PYTHONHOME", "KAGGLE_KERNEL_RUN_TYPE", "COLAB_RELEASE_TAG"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    flags = os.environ.get("XLA_FLAGS", "")
    env = venv_environment(kernel_venv, tmp_path / "xdg-cache") | {
        "VIRTUAL_ENV": str(kernel_venv),
        "IPYTHONDIR": str(tmp_path / "ipython"),
        "XLA_FLAGS": f"{flags} --xla_backend_optimization_level=0".strip(),
        "PIP_NO_INDEX": "1",  # the dependencies are there: pip installs the wheel alone
        "PIP_DISABLE_PIP_VERSION_CHECK": "1",
    }
    kernel = _kernelspec(tmp_path / "jupyter", str(kernel_venv / "bin" / "python"), env)

    parameters, copied_wheel, run_root = simulate(tmp_path, wheel)
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    _inject(nb, TINY_NIH | parameters)
    nb.cells.append(nbformat.v4.new_code_cell(WHERE))
    work = tmp_path / "work"  # the kernel's working directory: not the checkout
    work.mkdir()
    try:
        nbclient.NotebookClient(
            nb, kernel_name=kernel, timeout=600, resources={"metadata": {"path": str(work)}}
        ).execute()
        installers = [
            (dist_info / "INSTALLER").read_text().strip()
            for dist_info in site_packages.glob("imgae_dx_jax-*.dist-info")
        ]
    finally:
        if list(site_packages.glob("imgae_dx_jax-*.dist-info")):  # fresh for the next notebook
            uv_uninstall(kernel_venv / "bin" / "python", "imgae-dx-jax")

    def printed(cell) -> str:
        return "".join(o.get("text", "") for o in cell.get("outputs", []) if o.get("text"))

    installed = printed(nb.cells[_cell_index(nb, "def package_requirement")])
    assert f"pip install {copied_wheel}" in installed
    prefix, module = json.loads(printed(nb.cells[-1]).strip().splitlines()[-1])
    assert Path(prefix) == kernel_venv
    assert Path(module).is_relative_to(site_packages), module
    assert installers == ["pip"]  # installed by the notebook's pip, not by uv

    outputs = [out for cell in nb.cells for out in cell.get("outputs", [])]
    assert len([out for out in outputs if "image/png" in out.get("data", {})]) >= 2
    tables = [
        out["data"]["text/markdown"] for out in outputs if "text/markdown" in out.get("data", {})
    ]
    (model,) = parameters["MODELS"]
    assert any("AUROC" in table and f"| {model}" in table for table in tables)
    metrics = json.loads((run_root / "report" / "metrics.json").read_text())
    assert set(metrics["models"]) == {model}
    assert (run_root / "report" / "report.html").is_file()
    assert (run_root / model / "export").is_dir()
