"""Turn what the user names on the command line into a stream of ``Source`` records, and fetch remote ones.

A spec is one of: a local file (one source, whatever its extension); a list file (``.txt``/``.lst``: one URI
or path per line; ``.jsonl``: one ``{"uri"|"path"|"url": ...}`` object per line; ``.parquet``: a ``uri``,
``path`` or ``url`` column), local or remote, whose relative entries are taken relative to the list file; a
local directory or ``s3://`` prefix, walked recursively for video and image extensions; a glob (``*``,
``?``, ``[``; ``**`` spans directories), filtered the same way; an ``http(s)://`` URL or ``s3://`` object.

Everything streams: directories are listed one level at a time (in name order, hidden names skipped,
directory symlinks not followed), list files are read a line or a record batch at a time. Malformed list
entries and unreadable directories become ``Failure(stage="input")`` records; an unsupported scheme is a
configuration error and raises ``ValueError``.

Confinement (``InputsConfig.allowed_roots``, ``allowed_schemes``; the API sets both for every job): a spec is
checked before anything it names is opened, and so is every source it expands to: list entries, walked and
globbed files, file symlinks (resolved, with ``..``). A source outside the roots or with a scheme not allowed
becomes ``Failure(stage="input")`` and is never opened; ``fetch`` checks again and opens the resolved path.
"""

from __future__ import annotations

import io
import json
import os
import posixpath
import tempfile
import uuid
from collections.abc import Callable, Iterable, Iterator
from fnmatch import fnmatchcase
from pathlib import Path
from typing import IO, Any, Literal, NamedTuple
from urllib.parse import urlsplit

import aiohttp
import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
from fsspec.spec import AbstractFileSystem
from pydantic import Field, field_validator

from dataengine.config import Config
from dataengine.records import Failure, Source, normalize_uri
from dataengine.storage import transport_errors

__all__ = [
    "IMAGE_EXTENSIONS",
    "LIST_SUFFIXES",
    "VIDEO_EXTENSIONS",
    "InputsConfig",
    "Scheme",
    "fetch",
    "iter_sources",
]


# fmt: off
VIDEO_EXTENSIONS = (".mp4", ".mov", ".mkv", ".webm", ".avi", ".m4v", ".mpg", ".mpeg", ".ts", ".mts", ".flv",
                    ".wmv", ".gif")
# Stills become one-frame samples (ProbeConfig.images); probing refuses them when that is off.
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm")
# fmt: on
LIST_SUFFIXES = (".txt", ".lst", ".jsonl", ".parquet")
_REMOTE_SCHEMES = ("http", "https", "s3")
_SUPPORTED = "local paths, file://, http://, https:// and s3://"
Scheme = Literal["file", "http", "https", "s3"]  # "file": local paths, with or without file://
_LIST_KEYS = ("uri", "path", "url")
_PARQUET_BATCH_ROWS = 4096
ListDir = Callable[[str], list[tuple[str, bool]]]  # directory -> sorted (name, is_directory) of one level
ToUri = Callable[[str], str | Path]  # a path as its filesystem names it -> what Source.from_uri takes


class InputsConfig(Config):
    """Where inputs come from and how remote ones are reached."""

    extensions: tuple[str, ...] = Field(
        default=VIDEO_EXTENSIONS + IMAGE_EXTENSIONS,
        description="kept when walking directories, prefixes and globs",
    )
    storage_options: dict[str, dict[str, Any]] = Field(
        default_factory=dict,
        description='fsspec options per protocol: {"s3": {"endpoint_url": ..., "key": ..., "secret": ...}, '
        '"http": {"headers": ...}}; "http" also serves https',
    )
    cache_dir: Path = Field(
        default_factory=lambda: Path(tempfile.gettempdir()) / "dataengine-fetch",
        description="where fetched remote files are kept, named <video_id><suffix>",
    )
    fetch_timeout_s: float = Field(default=60.0, gt=0, description="limit on connecting and on each read")
    allowed_roots: tuple[Path, ...] | None = Field(
        default=None,
        description="None: any local path; else every local spec, list entry, walked file and symlink "
        "target must resolve (symlinks and .. followed) inside one of these folders, or it is a failure",
    )
    allowed_schemes: tuple[Scheme, ...] | None = Field(
        default=None,
        description='None: all; else the schemes specs and list entries may use ("file": local paths); '
        "others are failures",
    )

    @field_validator("allowed_roots")
    @classmethod
    def _resolved(cls, value: tuple[Path, ...] | None) -> tuple[Path, ...] | None:
        return None if value is None else tuple(root.expanduser().resolve() for root in value)

    @field_validator("extensions")
    @classmethod
    def _dotted_lower(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return tuple("." + ext.lower().lstrip(".") for ext in value)

    @field_validator("storage_options")
    @classmethod
    def _known_protocols(cls, value: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        if unknown := sorted(set(value) - {"s3", "http"}):
            raise ValueError(f"storage_options is keyed by protocol, 's3' or 'http'; got {unknown}")
        return value


def iter_sources(specs: Iterable[str], config: InputsConfig) -> Iterator[Source | Failure]:
    """Expand each spec, in order, into ``Source`` records (and ``Failure`` records for unreadable inputs).

    A local path that does not exist is still yielded (probing records it); a missing list file is a Failure.

    A spec or source refused by ``allowed_roots`` or ``allowed_schemes`` is a Failure, and nothing it names is
    opened.

    Raises:
        ValueError: a spec has an unsupported scheme (a configuration error).
        OSError: a remote spec cannot be inspected at all (endpoint unreachable, access denied).
    """
    for spec in specs:
        scheme = _scheme(spec)
        # A relative local name may hold a colon, e.g. "take:1.mp4".
        local = scheme in ("", "file") or (scheme not in _REMOTE_SCHEMES and Path(spec).exists())
        if not local and scheme not in _REMOTE_SCHEMES:
            raise ValueError(f"unsupported scheme {scheme!r} in {spec!r}: supported are {_SUPPORTED}")
        path = _local_path(spec)
        if refusal := _local_refusal(path, config) if local else _remote_refusal(spec, config):
            yield _input_failure(normalize_uri(_absolute(path) if local else spec), refusal)
        elif local:
            yield from _confined(_expand_local(path, config), config)
        else:
            with transport_errors(spec):
                yield from _confined(_expand_remote(spec, config), config)


def fetch(source: Source, config: InputsConfig) -> Path:
    """Return a local file holding ``source``: its own path when local, else a copy under ``cache_dir``.

    The copy is downloaded to a temporary name and renamed, so ``cache_dir/<video_id><suffix>`` is complete
    or absent; an existing one is reused without contacting the remote.

    With ``allowed_roots`` set, a local source is checked again and its resolved path returned: what is opened
    is what was checked.

    Raises:
        FileNotFoundError: the object does not exist (HTTP 404, missing S3 key).
        PermissionError: access denied (S3 403); a source outside ``allowed_roots`` or with a scheme not in
            ``allowed_schemes``.
        OSError: anything else: other HTTP statuses, refused connections, connects or reads slower than
            ``fetch_timeout_s`` (``TimeoutError`` over HTTP), a full disk.
    """
    if refusal := _refusal(source, config):
        raise PermissionError(f"{source.uri}: {refusal}")
    if source.is_local:
        return source.local_path if config.allowed_roots is None else source.local_path.resolve()
    suffix = posixpath.splitext(urlsplit(source.uri).path)[1]
    if not (suffix[1:].isalnum() and len(suffix) <= 9):
        suffix = ""  # keep odd characters out of cache names
    target = config.cache_dir / f"{source.video_id}{suffix}"
    if target.is_file():
        return target
    config.cache_dir.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.part")
    fs, path = _filesystem_for(source.uri, config)
    try:
        with transport_errors(source.uri):
            fs.get_file(path, str(partial))
        partial.replace(target)
    finally:
        partial.unlink(missing_ok=True)
    return target


# -------------------------------------------------------------------------------------- local and remote


def _expand_local(path: str, config: InputsConfig) -> Iterator[Source | Failure]:
    expanded = Path(path).expanduser()
    if _is_glob(path) and not expanded.exists():  # a literal name with brackets is taken as it is
        root, pattern = _split_glob(str(expanded))
        yield from _glob(_list_local, _absolute, root, pattern, config)
    elif expanded.is_dir():
        yield from _glob(_list_local, _absolute, str(expanded), ["**"], config)
    elif path.lower().endswith(LIST_SUFFIXES):
        yield from _read_list(normalize_uri(_absolute(path)), config)
    else:
        yield Source.from_uri(_absolute(path))


def _expand_remote(spec: str, config: InputsConfig) -> Iterator[Source | Failure]:
    if urlsplit(spec).path.lower().endswith(LIST_SUFFIXES):
        yield from _read_list(spec, config)
        return
    if _scheme(spec) != "s3":  # http: one object as named ('?' starts a query there, not a glob)
        yield Source.from_uri(spec)
        return
    fs, path = _filesystem_for(spec, config)
    path = path.rstrip("/")

    def list_dir(directory: str) -> list[tuple[str, bool]]:
        infos = [info for info in fs.ls(directory, detail=True) if info["name"].rstrip("/") != directory]
        fs.invalidate_cache(directory)  # keep one level in memory, not the whole bucket listing
        return sorted((posixpath.basename(i["name"].rstrip("/")), i["type"] == "directory") for i in infos)

    def to_uri(key: str) -> str:
        return f"s3://{key}"

    if _is_glob(path):
        yield from _glob(list_dir, to_uri, *_split_glob(path), config)
        return
    try:
        is_prefix = fs.info(path)["type"] == "directory"
    except FileNotFoundError:
        is_prefix = False  # fetching records the missing object
    if is_prefix:
        yield from _glob(list_dir, to_uri, path, ["**"], config)
    else:
        yield Source.from_uri(spec)


def _filesystem_for(uri: str, config: InputsConfig) -> tuple[AbstractFileSystem, str]:
    """The filesystem serving ``uri`` and the path it expects (local path, ``bucket/key``, or the URL)."""
    scheme, timeout = _scheme(uri), config.fetch_timeout_s
    if scheme in ("", "file"):
        return fsspec.filesystem("file"), _local_path(uri)
    if scheme == "s3":
        options = dict(config.storage_options.get("s3", {}))
        botocore_timeouts = {"connect_timeout": timeout, "read_timeout": timeout}
        options["config_kwargs"] = {**botocore_timeouts, **options.get("config_kwargs", {})}
        return fsspec.filesystem("s3", **options), uri.split("://", 1)[1]
    options = dict(config.storage_options.get("http", {}))
    aiohttp_timeout = aiohttp.ClientTimeout(total=None, sock_connect=timeout, sock_read=timeout)
    options["client_kwargs"] = {"timeout": aiohttp_timeout, **options.get("client_kwargs", {})}
    return fsspec.filesystem(scheme, **options), uri


def _list_local(directory: str) -> list[tuple[str, bool]]:
    with os.scandir(directory) as entries:  # a symlink to a directory counts as a file: no loops
        return sorted((entry.name, entry.is_dir(follow_symlinks=False)) for entry in entries)


def _local_path(spec: str) -> str:
    # The inverse of Source.local_path: a file:// URI is a path behind a prefix, never percent-decoded.
    return spec[len("file://") :] if spec[:7].lower() == "file://" else spec


def _absolute(path: str) -> Path:
    # Local sources are handed to Source.from_uri as Paths: a "file://" string is re-split as a URL, which
    # would take a "?" or "#" in a file name for a query or fragment.
    return Path(path).expanduser().absolute()


def _scheme(text: str) -> str:
    scheme = urlsplit(text).scheme.lower()
    return "" if len(scheme) <= 1 else scheme  # one letter: a Windows drive


# ------------------------------------------------------------------------------------------- confinement


def _confined(items: Iterable[Source | Failure], config: InputsConfig) -> Iterator[Source | Failure]:
    for item in items:
        if isinstance(item, Source) and (refusal := _refusal(item, config)):
            item = Failure.of(item, "input", refusal)
        yield item


def _refusal(source: Source, config: InputsConfig) -> str | None:
    """Why ``config`` forbids reading ``source``, or None."""
    if source.is_local:
        return _local_refusal(str(source.local_path), config)
    return _remote_refusal(source.uri, config)


def _local_refusal(path: str, config: InputsConfig) -> str | None:
    """Why ``config`` forbids the local ``path`` (a glob: its literal folder), or None."""
    if config.allowed_schemes is not None and "file" not in config.allowed_schemes:
        return "local paths are not allowed"
    if config.allowed_roots is None:
        return None
    expanded = str(Path(path).expanduser())
    literal = _split_glob(expanded)[0] if _is_glob(path) and not Path(expanded).exists() else expanded
    try:
        resolved = Path(literal).resolve()
    except (OSError, RuntimeError) as err:  # RuntimeError: a symlink loop
        return f"cannot resolve the path: {err}"
    if any(resolved.is_relative_to(root) for root in config.allowed_roots):
        return None
    return "outside the allowed roots (symlinks and '..' followed)"


def _remote_refusal(uri: str, config: InputsConfig) -> str | None:
    scheme = _scheme(uri)
    if config.allowed_schemes is None or scheme in config.allowed_schemes:
        return None
    return f"scheme {scheme!r} is not allowed (allowed: {', '.join(config.allowed_schemes)})"


# ------------------------------------------------------------------------------- walking and globbing


def _glob(
    list_dir: ListDir, to_uri: ToUri, root: str, pattern: list[str], config: InputsConfig
) -> Iterator[Source | Failure]:
    """Sources for the files under ``root`` whose relative path matches ``pattern`` and has a kept extension.

    ``pattern`` is a list of path components; ``["**"]`` walks the whole tree. A missing root matches nothing.
    """
    matched = 0
    for path in _walk(list_dir, to_uri, root, None if "**" in pattern else len(pattern), missing_ok=True):
        if isinstance(path, Failure):
            yield path
        elif path.lower().endswith(config.extensions) and _match(path[len(root) :].split("/")[1:], pattern):
            matched += 1
            yield Source.from_uri(to_uri(path))
    if not matched:  # recorded, so that a typo in a spec is visible in the failures, not silently empty
        where = posixpath.join(to_uri(root), *pattern)
        reason = f"{where} matched no files with extensions {' '.join(config.extensions)}"
        yield _input_failure(normalize_uri(to_uri(root)), reason)


def _walk(
    list_dir: ListDir, to_uri: ToUri, root: str, depth: int | None, missing_ok: bool = False
) -> Iterator[str | Failure]:
    """Depth-first file paths under ``root``, at most ``depth`` levels deep (None: all); hides dot-names."""
    try:
        entries = list_dir(root)
    except OSError as err:
        if not (missing_ok and isinstance(err, FileNotFoundError)):
            yield _input_failure(normalize_uri(to_uri(root)), f"cannot list directory: {err}")
        return
    for name, is_dir in entries:
        if name.startswith("."):
            continue
        if not is_dir:
            yield posixpath.join(root, name)
        elif depth is None or depth > 1:
            yield from _walk(list_dir, to_uri, posixpath.join(root, name), depth and depth - 1)


def _match(parts: list[str], pattern: list[str]) -> bool:
    if not pattern:
        return not parts
    if pattern[0] == "**":
        return any(_match(parts[i:], pattern[1:]) for i in range(len(parts) + 1))
    return bool(parts) and fnmatchcase(parts[0], pattern[0]) and _match(parts[1:], pattern[1:])


def _split_glob(path: str) -> tuple[str, list[str]]:
    """Split ``a/b/*/c*.mp4`` into the literal root ``a/b`` and the pattern components ``["*", "c*.mp4"]``."""
    parts = path.split("/")
    first = next(i for i, part in enumerate(parts) if _is_glob(part))
    root = "/".join(parts[:first]) or ("/" if path.startswith("/") else ".")
    return root, [part for part in parts[first:] if part]


def _is_glob(text: str) -> bool:
    return any(char in text for char in "*?[")


# ---------------------------------------------------------------------------------------------- list files


class _Entry(NamedTuple):
    """One line or row of a list file: the location it names (``value``), or why it names none."""

    tag: str  # "L12" (1-based line) or "row3" (0-based parquet row), the fragment a Failure's uri gets
    value: str | None
    reason: str = ""


def _read_list(list_uri: str, config: InputsConfig) -> Iterator[Source | Failure]:
    list_uri = normalize_uri(list_uri)
    suffix = posixpath.splitext(urlsplit(list_uri).path)[1].lower()
    fs, path = _filesystem_for(list_uri, config)
    try:
        with fs.open(path, "rb") as raw:
            entries = (
                _parquet_entries(raw) if suffix == ".parquet" else _text_entries(raw, suffix == ".jsonl")
            )
            yield from (_entry_record(entry, list_uri) for entry in entries)
    except FileNotFoundError as err:
        yield _input_failure(list_uri, f"list file not found: {err}")
    except pa.ArrowInvalid as err:
        yield _input_failure(list_uri, f"not a readable parquet file: {err}")


def _entry_record(entry: _Entry, list_uri: str) -> Source | Failure:
    reason = entry.reason
    if entry.value is not None:
        try:
            return Source.from_uri(_resolve(entry.value.strip(), list_uri))
        except ValueError as err:
            reason = str(err)
    return _input_failure(f"{list_uri}#{entry.tag}", reason)


def _text_entries(raw: IO[bytes], jsonl: bool) -> Iterator[_Entry]:
    for lineno, line in enumerate(io.TextIOWrapper(raw, encoding="utf-8-sig"), start=1):
        text, tag = line.strip(), f"L{lineno}"
        if not text or text.startswith("#"):
            continue
        if not jsonl:
            yield _Entry(tag, text)
            continue
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as err:
            yield _Entry(tag, None, f"line {lineno}: invalid JSON ({err.msg} at column {err.colno})")
            continue
        value = next((obj[key] for key in _LIST_KEYS if key in obj), None) if isinstance(obj, dict) else None
        if isinstance(value, str) and value.strip():
            yield _Entry(tag, value)
        else:
            yield _Entry(tag, None, f'line {lineno}: no "uri", "path" or "url" string in {text[:80]}')


def _parquet_entries(raw: IO[bytes]) -> Iterator[_Entry]:
    parquet = pq.ParquetFile(raw)
    names = parquet.schema_arrow.names
    column = next((name for name in _LIST_KEYS if name in names), None)
    if column is None:
        raise pa.ArrowInvalid(f"no column named uri, path or url (columns: {names})")
    row = 0
    for batch in parquet.iter_batches(batch_size=_PARQUET_BATCH_ROWS, columns=[column]):
        for value in batch.column(0).to_pylist():
            ok = isinstance(value, str) and bool(value.strip())
            yield _Entry(
                f"row{row}", value if ok else None, f"row {row}: {column} is {value!r}, not a location"
            )
            row += 1


def _resolve(entry: str, list_uri: str) -> str | Path:
    """An entry as a URI: a relative path is taken relative to the list file's directory."""
    scheme = _scheme(entry)
    if scheme in (*_REMOTE_SCHEMES, "file"):
        return entry
    if scheme:
        raise ValueError(f"unsupported scheme {scheme!r} in {entry!r}: supported are {_SUPPORTED}")
    if list_uri.startswith("file://"):
        return _absolute(str(Path(_local_path(list_uri)).parent / Path(entry).expanduser()))
    if entry.startswith("/"):
        return _absolute(entry)  # an absolute path in a remote list names a file on this machine
    parts = urlsplit(list_uri)
    path = posixpath.normpath(posixpath.join(posixpath.dirname(parts.path), entry))
    return parts._replace(path=path, query="").geturl()


def _input_failure(uri: str, reason: str) -> Failure:
    # uuid5 of the uri as written: video_id_for would drop a "#L12" fragment and give every bad line one id.
    return Failure(uri=uri, video_id=uuid.uuid5(uuid.NAMESPACE_URL, uri).hex, stage="input", reason=reason)
