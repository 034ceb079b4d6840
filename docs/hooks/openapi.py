"""MkDocs hook: the REST API reference, generated from the app itself at build time.

Builds the FastAPI app through its factory (``services.api.app.create_app``: nothing is read, loaded or
started until its lifespan runs, which ``.openapi()`` never does), then

- writes the spec into the site as ``openapi.json``, and
- replaces the line of ``api.md`` that starts with ``<!-- openapi -->`` (read on GitHub, a note saying where
  the reference is) with every endpoint (method, path, summary, parameters, request body, responses) and
  every schema, as Markdown.

So the page cannot drift from the code: a route or a field added to the API is on the next build's page.
"""

from __future__ import annotations

import json
from typing import Any

from mkdocs.exceptions import PluginError
from mkdocs.structure.files import File, Files
from mkdocs.structure.pages import Page

PAGE, MARKER, SPEC_FILE = "api.md", "<!-- openapi -->", "openapi.json"
_METHODS = ("get", "post", "put", "patch", "delete")

_spec: dict[str, Any] = {}


def on_files(files: Files, config: Any) -> Files:
    from services.api.app import create_app
    from services.api.settings import Settings

    _spec.clear()
    _spec.update(create_app(Settings()).openapi())
    files.append(File.generated(config, SPEC_FILE, content=json.dumps(_spec, indent=2) + "\n"))
    return files


def on_page_markdown(markdown: str, page: Page, config: Any, files: Files) -> str:
    if page.file.src_uri != PAGE:
        return markdown
    lines = markdown.split("\n")
    at = [i for i, line in enumerate(lines) if line.startswith(MARKER)]
    if len(at) != 1:
        raise PluginError(f"{PAGE} needs one line starting with {MARKER}, where the API reference goes")
    lines[at[0]] = render(_spec)
    return "\n".join(lines)


def render(spec: dict[str, Any]) -> str:
    """The endpoints and schemas of an OpenAPI 3 ``spec`` as Markdown."""
    info = spec["info"]
    lines = [
        f"Generated from `create_app().openapi()` when this site was built: {info['title']} "
        f"{info['version']}, OpenAPI {spec['openapi']}; the spec itself: [{SPEC_FILE}]({SPEC_FILE}).",
        "",
    ]
    for path, item in spec["paths"].items():
        for method in (m for m in _METHODS if m in item):
            lines += _operation(method, path, item[method])
    schemas = spec.get("components", {}).get("schemas", {})
    if schemas:
        lines += ["## Schemas", ""]
        for name, schema in schemas.items():
            lines += _schema(name, schema)
    return "\n".join(lines)


def _operation(method: str, path: str, op: dict[str, Any]) -> list[str]:
    auth = "API key (`X-API-Key` or `Authorization: Bearer`)" if op.get("security") else "none"
    lines = [f"### `{method.upper()} {path}`", ""]
    lines += [f"**{op.get('summary', '')}**. {op.get('description', '')}", "", f"Auth: {auth}.", ""]
    if params := op.get("parameters"):
        lines += ["| parameter | in | type | required | description |", "| --- | --- | --- | --- | --- |"]
        lines += [
            f"| `{p['name']}` | {p['in']} | {_type(p.get('schema', {}))} | {_yes(p.get('required'))} "
            f"| {_cell(p.get('description', ''))}{_limits(p.get('schema', {}))} |"
            for p in params
        ]
        lines.append("")
    if body := op.get("requestBody"):
        lines += ["Request body:", ""]
        lines += [f"- `{kind}`: {_body(media.get('schema', {}))}" for kind, media in body["content"].items()]
        lines.append("")
    lines += ["| status | meaning | body |", "| --- | --- | --- |"]
    for status, response in op.get("responses", {}).items():
        media = response.get("content", {}).get("application/json", {})
        body_type = _type(media["schema"]) if "schema" in media else ""
        lines.append(f"| {status} | {_cell(response.get('description', ''))} | {body_type} |")
    return [*lines, ""]


def _body(schema: dict[str, Any]) -> str:
    """A request body: its schema's name, or an inline object's fields."""
    if "$ref" in schema or "properties" not in schema:
        return _type(schema)
    required = set(schema.get("required", []))
    fields = [f"`{n}`{'' if n in required else '?'}: {_type(s)}" for n, s in schema["properties"].items()]
    return f"{schema.get('title', 'object')} {{{', '.join(fields)}}}"


def _schema(name: str, schema: dict[str, Any]) -> list[str]:
    lines = [f"### {name}", ""]
    if description := schema.get("description"):
        lines += [description, ""]
    if "enum" in schema:
        return [*lines, f"One of {_type(schema)}.", ""]
    required = set(schema.get("required", []))
    lines += ["| field | type | required | description |", "| --- | --- | --- | --- |"]
    for field, sub in schema.get("properties", {}).items():
        lines.append(
            f"| `{field}` | {_type(sub)} | {_yes(field in required)} "
            f"| {_cell(sub.get('description', ''))}{_limits(sub)} |"
        )
    return [*lines, ""]


def _type(schema: dict[str, Any]) -> str:
    """A schema as a short type: a linked schema name, ``array of X``, ``A or B``, an enum, a primitive."""
    if ref := schema.get("$ref"):
        name = ref.rsplit("/", 1)[-1]
        return f"[{name}](#{name.lower()})"
    if options := schema.get("anyOf") or schema.get("oneOf"):
        return " or ".join(_type(o) for o in options)
    if "enum" in schema:
        return ", ".join(f"`{json.dumps(v)}`" for v in schema["enum"])
    if "const" in schema:
        return f"`{json.dumps(schema['const'])}`"
    kind = schema.get("type", "any")
    if kind == "array":
        return f"array of {_type(schema.get('items', {}))}"
    if kind == "object" and isinstance(schema.get("additionalProperties"), dict):
        return f"object of {_type(schema['additionalProperties'])}"
    if fmt := schema.get("format"):
        return f"{kind} ({fmt})"
    return str(kind)


def _limits(schema: dict[str, Any]) -> str:
    keys = ("default", "minimum", "maximum", "exclusiveMinimum", "minLength", "maxLength", "minItems")
    keys += ("maxItems",)
    found = [f"{k} {json.dumps(schema[k])}" for k in keys if k in schema]
    return f" ({', '.join(found)})" if found else ""


def _yes(flag: Any) -> str:
    return "yes" if flag else "no"


def _cell(text: str) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")
