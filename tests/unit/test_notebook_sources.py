"""The notebook sources (notebooks/src, jupytext percent format) and their parser.

scripts/generate_notebooks.py reads the sources with a small parser of its own; these tests pin
its format (cells, types, tags, header, errors that name the line), check that jupytext reads
every source to the same cells, and that the cells the notebooks share stay the same.
"""

from __future__ import annotations

import importlib.util
import json
import tomllib
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

nbformat = pytest.importorskip("nbformat", reason="pip install '.[notebooks]'")

ROOT = Path(__file__).resolve().parents[2]
SOURCES = ROOT / "notebooks" / "src"


def _load_generator():
    spec = importlib.util.spec_from_file_location(
        "generate_notebooks", ROOT / "scripts" / "generate_notebooks.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


gen = _load_generator()

EXAMPLE = """\
# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
#   colab:
#     provenance: []
#   jupytext:
#     text_representation:
#       format_name: percent
# ---

# %% [markdown]
# # Title
#
# Some *text*, with `code`.
#   indented line

# %% tags=["parameters"]
EPOCHS = 5  # a comment
SETTINGS: list[str] = []

# %%
import sys


def f() -> int:
    \"\"\"A docstring.\"\"\"
    return 1


print(f(), sys.version)


# %% [md] tags=["a", "b"] slideshow={"slide_type": "skip"}
# Markdown again
#

# %% [raw]
# raw text
"""


def test_example_parses_to_its_cells():
    metadata, cells = gen.parse_percent(EXAMPLE, "example.py")
    # The header's jupyter mapping is the notebook metadata, less jupytext's own settings.
    assert metadata == {
        "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
        "colab": {"provenance": []},
    }
    assert [c.cell_type for c in cells] == ["markdown", "code", "code", "markdown", "raw"]
    assert cells[0].source == "# Title\n\nSome *text*, with `code`.\n  indented line"
    assert cells[1].source == "EPOCHS = 5  # a comment\nSETTINGS: list[str] = []"
    assert cells[1].metadata == {"tags": ["parameters"]}
    # Blank lines inside a cell stay; those before the next marker go.
    assert cells[2].source.startswith("import sys\n\n\ndef f() -> int:\n")
    assert cells[2].source.endswith("\n\n\nprint(f(), sys.version)")
    assert cells[2].metadata == {}
    assert cells[3].source == "Markdown again\n"  # a lone '#' is an empty line, as in jupytext
    assert cells[3].metadata == {"tags": ["a", "b"], "slideshow": {"slide_type": "skip"}}
    assert cells[4].source == "raw text"
    assert all(not c.get("outputs") for c in cells)


def test_notebook_has_stable_ids_and_validates():
    metadata, cells = gen.parse_percent(EXAMPLE, "example.py")
    nb = gen.notebook("example", metadata, cells)
    assert [c.id for c in nb.cells] == [f"example-{i:02d}" for i in range(5)]
    assert (nb.nbformat, nb.nbformat_minor) == (4, 5)
    nbformat.validate(nb)
    again = gen.notebook("example", *gen.parse_percent(EXAMPLE, "example.py"))
    assert gen.serialize(nb) == gen.serialize(again)


def test_a_source_without_header_has_no_metadata():
    metadata, cells = gen.parse_percent("\n# %%\nx = 1\n")
    assert metadata == {}
    assert [(c.cell_type, c.source) for c in cells] == [("code", "x = 1")]


# Cells as the percent format writes them: (type, source lines, tags).
_LINE = st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=30).filter(
    lambda line: not gen._ANY_MARKER.match(line) and not gen._ANY_MARKER.match("# " + line)
)
_TEXT = st.lists(_LINE, min_size=1, max_size=6).filter(lambda lines: lines[-1].strip() != "")
_TAGS = st.lists(st.text(alphabet="abcdefghij-_ ", min_size=1, max_size=8), max_size=3)
_CELLS = st.lists(st.tuples(st.sampled_from(["code", "markdown"]), _TEXT, _TAGS), max_size=6)


def _percent(cells: list[tuple[str, list[str], list[str]]]) -> str:
    """Write cells in the percent format, as jupytext does."""
    parts = []
    for cell_type, lines, tags in cells:
        marker = "# %%" + (" [markdown]" if cell_type == "markdown" else "")
        if tags:
            marker += " tags=" + json.dumps(tags)
        body = (
            [f"# {line}" if line else "#" for line in lines] if cell_type == "markdown" else lines
        )
        parts.append("\n".join([marker, *body]))
    return "\n\n".join(parts) + "\n"


@given(_CELLS.filter(bool))
def test_percent_round_trip(cells):
    _, parsed = gen.parse_percent(_percent(cells))
    assert [(c.cell_type, c.source.split("\n"), c.metadata.get("tags", [])) for c in parsed] == [
        (cell_type, lines, tags) for cell_type, lines, tags in cells
    ]


@pytest.mark.parametrize(
    ("text", "line", "message"),
    [
        ("# %% [markdwn]\n# text\n", 1, "unknown cell type [markdwn]"),
        ("# %%\nx = 1\n\n# %% tags=[parameters]\ny = 2\n", 4, "not JSON"),
        ('# %% tags=["a"]x=1\n', 1, "a space must separate"),
        ("# %% Train the model\nx = 1\n", 1, "cell titles are not supported"),
        ("#%%\nx = 1\n", 1, "write cell markers as '# %%'"),
        ("# %%\nif True:\n    # %%\n    x = 1\n", 3, "write cell markers as '# %%'"),
        ("# %% [markdown]\n# text\nnot a comment\n", 3, "comment lines"),
        ("x = 1\n# %%\ny = 2\n", 1, "before the first '# %%' marker"),
        ("# ---\n# jupyter: {}\n# %%\nx = 1\n", 1, "no closing '# ---'"),
        ("# ---\n# jupyter: [\n# ---\n# %%\n", None, "not YAML"),
        ("# ---\njupyter: {}\n# ---\n# %%\n", 2, "header lines are comments"),
        ("\n\n", None, "no cells"),
    ],
)
def test_malformed_source_is_a_clear_error(text, line, message):
    with pytest.raises(gen.SourceError, match=r"^bad\.py") as error:
        gen.parse_percent(text, "bad.py")
    assert message in str(error.value)
    if line is not None:
        assert str(error.value).startswith(f"bad.py:{line}: ")


def test_main_writes_checks_and_reports(tmp_path, capsys):
    src, out = tmp_path / "src", tmp_path / "out"
    src.mkdir()
    (src / "demo.py").write_text("# %% [markdown]\n# Demo\n\n# %%\nprint(1)\n")
    assert gen.main(["--src", str(src), "--out", str(out), "--check"]) == 1  # not written yet
    assert gen.main(["--src", str(src), "--out", str(out)]) == 0
    nb = nbformat.read(out / "demo.ipynb", as_version=4)
    assert [c.source for c in nb.cells] == ["Demo", "print(1)"]
    assert gen.main(["--src", str(src), "--out", str(out), "--check"]) == 0

    (src / "demo.py").write_text("# %% [markdown]\n# Demo\n\n# %%\nprint(2)\n")
    assert gen.main(["--src", str(src), "--out", str(out), "--check"]) == 1
    assert "out of date" in capsys.readouterr().err
    assert gen.main(["--src", str(src), "--out", str(out)]) == 0

    (out / "orphan.ipynb").write_text("{}")
    assert gen.main(["--src", str(src), "--out", str(out), "--check"]) == 1
    assert "orphan.ipynb" in capsys.readouterr().err
    (out / "orphan.ipynb").unlink()

    (src / "demo.py").write_text("# %% [markdwn]\n# Demo\n")
    assert gen.main(["--src", str(src), "--out", str(out), "--check"]) == 2
    assert "demo.py:1: unknown cell type" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# The notebooks' sources


def test_every_source_makes_its_notebook():
    sources = gen.sources()
    assert {p.stem for p in sources} == {
        "quickstart",
        "nih_progressive_colab",
        "nih_kaggle_notebook",
    }
    built = gen.build_all()
    assert set(built) == {f"{p.stem}.ipynb" for p in sources}
    for nb in built.values():
        assert nb.metadata["kernelspec"]["name"] == "python3"
        assert nb.cells[0].cell_type == "markdown"
        for cell in nb.cells:
            if cell.cell_type == "code":
                compile(cell.source, cell.id, "exec")  # plain Python, no magics


# jupytext's notes on the text file's layout (blank lines between cells), not cell content.
_LAYOUT = {"lines_to_next_cell", "lines_to_end_of_cell_marker", "cell_marker"}


@pytest.mark.parametrize("path", sorted(SOURCES.glob("*.py")), ids=lambda p: p.stem)
def test_jupytext_reads_the_same_cells(path):
    jupytext = pytest.importorskip("jupytext")
    text = path.read_text(encoding="utf-8")
    metadata, cells = gen.parse_percent(text, str(path))
    theirs = jupytext.reads(text, fmt="py:percent")
    assert {k: v for k, v in theirs.metadata.items() if k != "jupytext"} == metadata
    assert len(theirs.cells) == len(cells)
    for ours, their in zip(cells, theirs.cells, strict=True):
        assert their.cell_type == ours.cell_type
        assert their.source == ours.source
        assert {k: v for k, v in their.metadata.items() if k not in _LAYOUT} == ours.metadata


def _shared(source: str, start: str, end: str | None = None) -> str:
    """The part of ``source`` from the line starting with ``start`` (to the one with ``end``)."""
    lines = source.split("\n")
    first = next(i for i, line in enumerate(lines) if line.startswith(start))
    last = len(lines) if end is None else next(i for i, line in enumerate(lines) if end in line)
    return "\n".join(lines[first:last])


# Code the notebooks share, each copy in its own source: (marker of the cell, first line, end).
SHARED = [
    ("def package_requirement", "# Install the package", None),
    ("WANDB_API_KEY", "# Optional: Weights & Biases", None),
    ("def cli_args", "def cli_args", "train_and_evaluate(config"),
    ("compare_runs(", "from imgae_dx_jax.api import compare_runs", None),
    ("display(Image", "from IPython.display import", None),
]


@pytest.mark.parametrize(("marker", "start", "end"), SHARED, ids=[s[0] for s in SHARED])
def test_shared_cells_are_the_same_in_every_notebook(marker, start, end):
    copies = {}
    for name, nb in gen.build_all().items():
        (cell,) = [c for c in nb.cells if c.cell_type == "code" and marker in c.source]
        copies[name] = _shared(cell.source, start, end)
    assert len(copies) == 3
    assert len(set(copies.values())) == 1, f"the notebooks' copies differ: {sorted(copies)}"


def test_the_notebooks_install_the_jax_plugins_the_package_declares():
    """Before the package is installed a notebook names the accelerator's JAX plugin itself:
    the same requirement as the package's ``cuda`` and ``tpu`` extras."""
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    for path in sorted(SOURCES.glob("*.py")):
        source = path.read_text()
        for extra in ("cuda", "tpu"):
            (requirement,) = extras[extra]
            assert f'"{requirement}"' in source, f"{path.name}: not {requirement} ({extra})"
