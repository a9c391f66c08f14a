"""MkDocs hook: pages generated from the code, so the docs cannot drift from it.

- ``cli.md``: ``<!-- cli-reference -->`` becomes the ``--help`` of ``imgae`` and of every
  sub-command (:func:`imgae_dx_jax.cli.imgae_parser`, which holds the parsers of the
  ``imgae-X`` commands).
- ``configuration.md``: ``<!-- default-config -->`` becomes the packaged ``default.yaml``
  and ``<!-- packaged-configs -->`` the list of packaged config files.
- ``changelog.md``: the repository's ``CHANGELOG.md``.
- ``api/<module>.md``: one mkdocstrings page per module of the package, listed in the nav
  under "API reference".
"""

from __future__ import annotations

import argparse
import importlib
import os
import pkgutil
from importlib import resources
from pathlib import Path
from typing import Any

from mkdocs.structure.files import File, Files

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = "imgae_dx_jax"


def _modules() -> list[str]:
    package = importlib.import_module(PACKAGE)
    names = [PACKAGE]
    for info in pkgutil.walk_packages(package.__path__, prefix=f"{PACKAGE}."):
        if not info.name.rsplit(".", 1)[-1].startswith("_"):
            names.append(info.name)
    return sorted(names)


def _api_uri(module: str) -> str:
    return f"api/{module}.md"


def on_config(config: Any) -> Any:
    """Put one API page per module into the nav's "API reference" section."""
    entries = [{module: _api_uri(module)} for module in _modules()]
    for item in config["nav"]:
        if isinstance(item, dict) and "API reference" in item:
            item["API reference"] = entries
            break
    else:
        config["nav"].append({"API reference": entries})
    return config


def on_files(files: Files, config: Any) -> Files:
    """Add the generated API pages and the changelog."""
    for module in _modules():
        title = module
        content = f"# `{title}`\n\n::: {module}\n"
        files.append(File.generated(config, _api_uri(module), content=content))
    changelog = (ROOT / "CHANGELOG.md").read_text(encoding="utf-8")
    files.append(File.generated(config, "changelog.md", content=changelog))
    return files


def _walk(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    out = [parser]
    for action in parser._actions:  # argparse keeps sub-commands here; no public accessor
        if isinstance(action, argparse._SubParsersAction):
            for sub in dict.fromkeys(action.choices.values()):
                out += _walk(sub)
    return out


def cli_reference() -> str:
    """Markdown with the ``--help`` text of ``imgae`` and of every sub-command."""
    os.environ["COLUMNS"] = "96"  # argparse wraps to this width
    os.environ["NO_COLOR"] = "1"  # Python 3.14+ would colour the help text
    top = importlib.import_module(f"{PACKAGE}.cli").imgae_parser()
    sections = []
    for parser in _walk(top):
        level = "##" if parser is top else "###"
        text = parser.format_help().rstrip()
        sections.append(f"{level} `{parser.prog}`\n\n```text\n{text}\n```\n")
    return "\n".join(sections)


def _packaged_configs() -> str:
    configs = resources.files(PACKAGE) / "configs"
    names = sorted(
        str(Path(str(p)).relative_to(str(configs)))
        for p in Path(str(configs)).rglob("*.yaml")
    )
    return "\n".join(f"- `{name}`" for name in names)


def on_page_markdown(markdown: str, page: Any, config: Any, files: Files) -> str:
    """Fill the placeholders of the hand-written pages."""
    if "<!-- cli-reference -->" in markdown:
        markdown = markdown.replace("<!-- cli-reference -->", cli_reference())
    if "<!-- default-config -->" in markdown:
        text = (resources.files(PACKAGE) / "configs" / "default.yaml").read_text()
        markdown = markdown.replace("<!-- default-config -->", f"```yaml\n{text.rstrip()}\n```")
    if "<!-- packaged-configs -->" in markdown:
        markdown = markdown.replace("<!-- packaged-configs -->", _packaged_configs())
    return markdown
