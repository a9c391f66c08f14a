"""Generate the notebooks in ``notebooks/`` from their Python sources in ``notebooks/src/``.

Each notebook is written as a Python file in jupytext's percent format:
``notebooks/src/quickstart.py`` gives ``notebooks/quickstart.ipynb``. Edit the source, never
the ``.ipynb`` file, then run

    python scripts/generate_notebooks.py          # rewrite notebooks/*.ipynb
    python scripts/generate_notebooks.py --check  # exit 1 when a committed notebook differs

The sources are real Python: ``hatch run lint:check`` runs ruff (lint and format) and mypy over
them, the whole notebook being one module. The subset of the percent format read here (jupytext
reads these files to the same cells, see ``tests/unit/test_notebook_sources.py``):

- an optional header, YAML in comment lines between two ``# ---`` lines, whose ``jupyter``
  mapping is the notebook's metadata (kernelspec, Colab's ``accelerator`` ...);
- ``# %%`` starts a code cell, ``# %% [markdown]`` (or ``[md]``) a Markdown cell and
  ``# %% [raw]`` a raw cell, whose lines are comments: ``# text``, or ``#`` for an empty line;
- cell metadata follow the marker as ``key=value`` pairs with JSON values, e.g.
  ``# %% tags=["parameters"]`` for the cell papermill injects parameters after;
- a cell ends at the next marker; blank lines before it are not part of the cell.

Code cells are plain Python, without IPython magics (install with ``subprocess`` and
``sys.executable -m pip``); jupytext would read some comments as commented-out magics
(``# !cmd``, ``# %time``, ``# cd dir``, ``# name?``), and its test fails on those. Anything
else (a cell title, text before the first marker, a Markdown line that is not a comment,
malformed metadata) is an error naming the line.

``tests/integration/test_notebooks.py`` fails when a committed notebook differs from what this
script produces, and executes the notebooks headlessly with tiny settings injected after their
``parameters`` cell (the papermill convention): the Colab and Kaggle ones in a fresh venv, from
their install cell on.

Generation is deterministic: no timestamps, no outputs, and cell ids derived from the
notebook name and the cell position.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

import nbformat
import yaml
from nbformat.notebooknode import NotebookNode

NOTEBOOK_DIR = Path(__file__).resolve().parent.parent / "notebooks"
SOURCE_DIR = NOTEBOOK_DIR / "src"

HEADER_FENCE = "# ---"
# A line that any percent-format reader takes for a cell marker (indented, "#%%", "# %%%" ...).
_ANY_MARKER = re.compile(r"^\s*#\s*%%")
# The marker form read here: "# %%", then optionally " [type]" and " key=value" pairs.
_MARKER = re.compile(r"^# %%(?:$| (?P<rest>.*)$)")
_CELL_TYPE = re.compile(r"^\[(?P<type>[^\]]*)\]\s*")
_CELL_TYPES = {"markdown": "markdown", "md": "markdown", "raw": "raw"}
_METADATA_KEY = re.compile(r"(?P<key>[A-Za-z_][\w.-]*)=")


class SourceError(ValueError):
    """A notebook source outside the percent-format subset this script reads."""


def _metadata(text: str, where: str) -> dict[str, Any]:
    """The ``key=value`` pairs (JSON values) after a cell marker."""
    metadata: dict[str, Any] = {}
    decoder = json.JSONDecoder()
    position = 0
    while position < len(text):
        match = _METADATA_KEY.match(text, position)
        if match is None:
            raise SourceError(
                f"{where}: expected key=value cell metadata (a JSON value, e.g. "
                f'tags=["parameters"]), got {text[position:]!r}; cell titles are not supported'
            )
        try:
            value, position = decoder.raw_decode(text, match.end())
        except json.JSONDecodeError as error:
            raise SourceError(
                f"{where}: the value of {match['key']!r} is not JSON: {error.msg}"
            ) from None
        if position < len(text) and text[position] != " ":
            raise SourceError(f"{where}: a space must separate the metadata after {match['key']}")
        metadata[match["key"]] = value
        position = len(text) - len(text[position:].lstrip(" "))
    return metadata


def _marker(line: str, where: str) -> tuple[str, dict[str, Any]]:
    """The cell type and metadata of a cell marker line."""
    match = _MARKER.match(line)
    if match is None:
        raise SourceError(f"{where}: write cell markers as '# %%' at the start of a line: {line!r}")
    rest = (match["rest"] or "").strip(" ")
    cell_type = "code"
    typed = _CELL_TYPE.match(rest)
    if typed:
        if typed["type"] not in _CELL_TYPES:
            raise SourceError(
                f"{where}: unknown cell type [{typed['type']}] (use [markdown], [md] or [raw])"
            )
        cell_type = _CELL_TYPES[typed["type"]]
        rest = rest[typed.end() :]
    return cell_type, _metadata(rest, where)


def _header(lines: list[str], origin: str) -> tuple[dict[str, Any], int]:
    """The notebook metadata of the YAML header, and the index of the first line after it."""
    if not lines or lines[0] != HEADER_FENCE:
        return {}, 0
    try:
        end = lines.index(HEADER_FENCE, 1)
    except ValueError:
        raise SourceError(f"{origin}:1: the header has no closing {HEADER_FENCE!r}") from None
    yaml_lines = []
    for number, line in enumerate(lines[1:end], start=2):
        if line != "#" and not line.startswith("# "):
            raise SourceError(f"{origin}:{number}: header lines are comments ('# ...')")
        yaml_lines.append(line[2:])
    try:
        header = yaml.safe_load("\n".join(yaml_lines)) or {}
    except yaml.YAMLError as error:
        raise SourceError(f"{origin}: the header is not YAML: {error}") from None
    if not isinstance(header, dict) or not isinstance(header.get("jupyter", {}), dict):
        raise SourceError(f"{origin}: the header must be a mapping with a 'jupyter' mapping")
    metadata = dict(header.get("jupyter") or {})
    metadata.pop("jupytext", None)  # jupytext's own settings, not the notebook's
    return metadata, end + 1


def _uncomment(lines: list[str], first: int, origin: str) -> list[str]:
    """The text of a Markdown or raw cell, whose lines are ``# text`` or ``#``."""
    text = []
    for number, line in enumerate(lines, start=first):
        if line != "#" and not line.startswith("# "):
            raise SourceError(
                f"{origin}:{number}: a Markdown or raw cell holds comment lines ('# text', or "
                f"'#' for an empty line), not {line!r}"
            )
        text.append(line[2:])
    return text


def parse_percent(text: str, origin: str = "<source>") -> tuple[dict[str, Any], list[NotebookNode]]:
    """The notebook metadata and the cells of a percent-format source.

    Raises:
        SourceError: the text is outside the subset described in this module's docstring;
            the message names ``origin`` and the line.
    """
    lines = text.splitlines()
    metadata, start = _header(lines, origin)
    segments: list[tuple[int, str, list[str]]] = []  # line number, marker, body of each cell
    for number, line in enumerate(lines[start:], start=start + 1):
        if _ANY_MARKER.match(line):
            segments.append((number, line, []))
        elif segments:
            segments[-1][2].append(line)
        elif line.strip():
            raise SourceError(f"{origin}:{number}: text before the first '# %%' marker")
    cells: list[NotebookNode] = []
    for number, marker, body in segments:
        cell_type, cell_metadata = _marker(marker, f"{origin}:{number}")
        while body and not body[-1].strip():
            body.pop()
        if cell_type == "code":
            cell = nbformat.v4.new_code_cell("\n".join(body))
        elif cell_type == "markdown":
            cell = nbformat.v4.new_markdown_cell("\n".join(_uncomment(body, number + 1, origin)))
        else:
            cell = nbformat.v4.new_raw_cell("\n".join(_uncomment(body, number + 1, origin)))
        cell.metadata.update(cell_metadata)
        cells.append(cell)
    if not cells:
        raise SourceError(f"{origin}: no cells (each starts with a '# %%' line)")
    return metadata, cells


def notebook(name: str, metadata: dict[str, Any], cells: list[NotebookNode]) -> NotebookNode:
    """A v4.5 notebook with stable cell ids (``<name>-<position>``) and no outputs."""
    nb = nbformat.v4.new_notebook()
    nb.nbformat, nb.nbformat_minor = 4, 5
    for index, cell in enumerate(cells):
        cell.id = f"{name}-{index:02d}"
    nb.cells = cells
    nb.metadata = nbformat.from_dict(metadata)
    nbformat.validate(nb)
    return nb


def serialize(nb: NotebookNode) -> str:
    """The exact text written to disk (sorted keys, one-space indent, final newline)."""
    return json.dumps(nb, sort_keys=True, indent=1, ensure_ascii=False) + "\n"


def sources(source_dir: Path = SOURCE_DIR) -> list[Path]:
    """The notebook sources, ``<name>.py`` for ``<name>.ipynb``, sorted."""
    return sorted(source_dir.glob("*.py"))


def build(path: Path) -> NotebookNode:
    """The notebook of one source file."""
    metadata, cells = parse_percent(path.read_text(encoding="utf-8"), str(path))
    return notebook(path.stem, metadata, cells)


def build_all(source_dir: Path = SOURCE_DIR) -> dict[str, NotebookNode]:
    """Every notebook, by file name (``quickstart.ipynb`` ...)."""
    return {f"{path.stem}.ipynb": build(path) for path in sources(source_dir)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--check", action="store_true", help="only compare with the committed notebooks"
    )
    parser.add_argument("--out", type=Path, default=NOTEBOOK_DIR, help="output directory")
    parser.add_argument("--src", type=Path, default=SOURCE_DIR, help="source directory")
    args = parser.parse_args(argv)
    try:
        notebooks = build_all(args.src)
    except SourceError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if not notebooks:
        print(f"error: no notebook sources (*.py) in {args.src}", file=sys.stderr)
        return 2
    stale = []
    for filename, nb in notebooks.items():
        path = args.out / filename
        text = serialize(nb)
        if args.check:
            if not path.is_file() or path.read_text(encoding="utf-8") != text:
                stale.append(path)
            continue
        args.out.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        print("wrote", path)
    # A notebook without a source would ship unchecked: the generator never deletes one.
    orphans = sorted(set(args.out.glob("*.ipynb")) - {args.out / name for name in notebooks})
    if orphans:
        print(f"no source in {args.src} (add one or delete):", *map(str, orphans), file=sys.stderr)
    if stale:
        print(
            "out of date (run python scripts/generate_notebooks.py):",
            *map(str, stale),
            file=sys.stderr,
        )
    return 1 if stale or orphans else 0


if __name__ == "__main__":
    sys.exit(main())
