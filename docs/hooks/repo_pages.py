"""MkDocs hook: the repository's Markdown pages on the site, and links that work on GitHub and on the site.

The pages under ``docs/`` link ``../SECURITY.md`` and ``../k8s/README.md`` the way GitHub resolves them, and
the README links ``docs/cli.md``; MkDocs only knows the files under ``docs/``. This hook adds ``REPO_PAGES``
to the site under ``repo/`` (``SECURITY.md`` -> ``repo/SECURITY.md``) and, in every page, rewrites each
relative link that leaves ``docs/`` into the site's path of its target. A link to anything else outside
``docs/`` is left as written, so ``mkdocs build --strict`` reports it.
"""

from __future__ import annotations

import posixpath
import re
from pathlib import Path
from typing import Any

from mkdocs.structure.files import File, Files
from mkdocs.structure.pages import Page

REPO_PAGES = ("README.md", "SECURITY.md", "k8s/README.md")  # repository paths shown on the site
SITE_DIR = "repo"  # where they go on the site
DOCS = "docs"  # docs_dir, as a repository path

# A Markdown link or image target: ](target) or ](target "title"); the target has no spaces.
_LINK = re.compile(r"(\]\()([^)\s]+)((?:\s+\"[^\"]*\")?\))")


def on_files(files: Files, config: Any) -> Files:
    root = Path(config.config_file_path).parent
    for path in REPO_PAGES:
        source = root / path
        files.append(File.generated(config, f"{SITE_DIR}/{path}", abs_src_path=str(source)))
    return files


def on_page_markdown(markdown: str, page: Page, config: Any, files: Files) -> str:
    here = _repo_path(page.file.src_uri)
    return _LINK.sub(lambda m: m[1] + _site_target(m[2], here, page.file.src_uri) + m[3], markdown)


def _repo_path(src_uri: str) -> str:
    """A page's repository path: ``repo/SECURITY.md`` -> ``SECURITY.md``, ``cli.md`` -> ``docs/cli.md``."""
    prefix = f"{SITE_DIR}/"
    if src_uri.startswith(prefix) and src_uri.removeprefix(prefix) in REPO_PAGES:
        return src_uri.removeprefix(prefix)
    return f"{DOCS}/{src_uri}"


def _site_target(target: str, page_repo_path: str, page_src_uri: str) -> str:
    """``target`` as the site must spell it from the page, or unchanged when it is not a repository path."""
    if re.match(r"^[a-z][a-z0-9+.-]*:|^/|^#", target, re.IGNORECASE):
        return target  # a URL, an absolute path or an anchor on the same page
    path, hash_, anchor = target.partition("#")
    resolved = posixpath.normpath(posixpath.join(posixpath.dirname(page_repo_path), path))
    if resolved.startswith(f"{DOCS}/"):
        site_path = resolved.removeprefix(f"{DOCS}/")
    elif resolved in REPO_PAGES:
        site_path = f"{SITE_DIR}/{resolved}"
    else:
        return target
    relative = posixpath.relpath(site_path, posixpath.dirname(page_src_uri) or ".")
    return relative + hash_ + anchor
