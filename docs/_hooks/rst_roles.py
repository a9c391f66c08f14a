"""Griffe extension: render the Sphinx roles of the docstrings as inline code.

The package's docstrings use Google style with Sphinx cross-reference roles such as
``:func:`coarse_noise``` or ``:class:`~imgae_dx_jax.data.nih.Catalog```; Markdown has no
roles, so they become ``coarse_noise`` and ``Catalog`` in code font.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

ROLE = re.compile(r":(?:py:)?(?:func|class|mod|meth|attr|data|exc|obj|const):`(~?)([^`]+)`")


def _code(match: re.Match[str]) -> str:
    short, target = match.group(1), match.group(2)
    return f"`{target.rsplit('.', 1)[-1] if short else target}`"


class RstRoles(griffe.Extension):
    """Rewrite ``:role:`target``` to ``target`` in code font."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        """Rewrite the docstring of every loaded object."""
        if obj.docstring is not None:
            obj.docstring.value = ROLE.sub(_code, obj.docstring.value)
