"""MkDocs hook: the manifest table of ``output-format.md`` must list exactly the columns the code writes.

The table under "Manifest columns" (rows ``| `name` | type | meaning |``) is compared with
``dataengine.shards.MANIFEST_SCHEMA``, name by name, in order, with its Arrow types; any difference stops the
build with what differs, so the page cannot drift from the writer.
"""

from __future__ import annotations

import re
from typing import Any

from mkdocs.exceptions import PluginError
from mkdocs.structure.files import Files
from mkdocs.structure.pages import Page

PAGE, SECTION = "output-format.md", "## Manifest columns"
_ROW = re.compile(r"^\|\s*`([a-z_]+)`\s*\|\s*([^|]+?)\s*\|", re.MULTILINE)


def on_page_markdown(markdown: str, page: Page, config: Any, files: Files) -> str:
    if page.file.src_uri != PAGE:
        return markdown
    from dataengine.shards import MANIFEST_SCHEMA

    section = markdown.partition(SECTION)[2].split("\n## ", 1)[0]
    documented = [(name, kind.strip("`")) for name, kind in _ROW.findall(section)]
    written = [(f.name, _arrow_type(f.type)) for f in MANIFEST_SCHEMA]
    if documented != written:
        missing = [c for c in written if c not in documented]
        extra = [c for c in documented if c not in written]
        raise PluginError(
            f"{PAGE}: the manifest table differs from dataengine.shards.MANIFEST_SCHEMA "
            f"(order or types). Not documented: {missing}; not written by the code: {extra}"
        )
    return markdown


def _arrow_type(kind: Any) -> str:
    """``list<int32>`` for Arrow's ``list<element: int32>``; the plain name otherwise."""
    value_type = getattr(kind, "value_type", None)
    return f"list<{value_type}>" if value_type is not None else str(kind)
