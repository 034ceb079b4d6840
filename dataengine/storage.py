"""A run's output root, a local folder or an fsspec URL (``s3://bucket/run``, ``gs://``, ``az://``), with
writes that appear under their final name only when complete.

Local: a file is written as ``dir/.{name}.partial``, fsync'ed, renamed and its folder fsync'ed, so a crash
leaves at most a hidden ``.partial``. Object storage: an object becomes visible only when its upload
completes (one PUT, or a multipart upload completed on close); a failed write aborts the upload, and a killed
writer leaves an unfinished multipart upload, invisible to listings, that ``Store.abort_uploads`` removes.
"""

from __future__ import annotations

import contextlib
import os
import posixpath
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import IO, Any

import aiohttp
import fsspec
from botocore.exceptions import BotoCoreError
from fsspec.spec import AbstractFileSystem

__all__ = ["Store", "transport_errors"]

_PARTIAL = ".partial"
_LOCAL_PROTOCOLS = (None, "file", "local")


@contextlib.contextmanager
def transport_errors(uri: str) -> Iterator[None]:
    """Re-raise aiohttp and botocore errors (not all are OSErrors) as OSError naming ``uri``, the family
    callers handle."""
    try:
        yield
    except OSError as err:
        if uri in str(err):
            raise
        raise _renamed(err, uri) from err
    except (aiohttp.ClientError, BotoCoreError) as err:
        raise OSError(f"{uri}: {err}") from err


def _renamed(err: OSError, uri: str) -> OSError:
    """``err`` with ``uri`` in its message (s3fs's "The specified bucket does not exist" names nothing), of
    the same type so callers' ``except FileNotFoundError`` still holds; ``err`` itself if that type cannot be
    built so."""
    try:
        if err.errno is not None and err.strerror:
            where = f" ({err.filename})" if err.filename and err.filename != uri else ""
            return type(err)(err.errno, f"{uri}: {err.strerror}{where}")
        return type(err)(f"{uri}: {err}")
    except TypeError:
        return err


class Store:
    """A run's root: a local folder or an fsspec URL. Picklable (Ray ships it to writer actors).

    Attributes:
        url: the target as given, normalised: no trailing ``/``; a local one is an absolute path.
        local: whether it is a local folder (a plain path or ``file://``).
        fs: the fsspec filesystem serving it.

    Relative ``parts`` may contain ``/`` (``"manifest/x.parquet"``) but no ``..`` and no empty segment.
    """

    def __init__(
        self, target: str | os.PathLike[str] | Store, storage_options: Mapping[str, Any] | None = None
    ) -> None:
        if isinstance(target, Store):
            given: Mapping[str, Any] = target.storage_options if storage_options is None else storage_options
            text = target.url
        else:
            given, text = storage_options or {}, os.fspath(target)
        options: dict[str, Any] = dict(given)
        protocol, rest = fsspec.core.split_protocol(text)
        self.storage_options: dict[str, Any] = options
        self.local: bool = protocol in _LOCAL_PROTOCOLS
        self.url: str
        if self.local:
            self.url = str(Path(rest).expanduser().absolute())
            self.fs: AbstractFileSystem = fsspec.filesystem("file")
            self._root = self.url
        else:
            self._root = fsspec.core.strip_protocol(text).rstrip("/")
            if not self._root:
                raise ValueError(f"{text!r}: an object-storage output needs a bucket (s3://bucket/run)")
            self.url = text.rstrip("/")
            self.fs = fsspec.filesystem(protocol, **options)
        self._protocol = protocol or "file"

    def __reduce__(self) -> tuple[type[Store], tuple[str, dict[str, Any]]]:
        return Store, (self.url, self.storage_options)  # the filesystem is rebuilt where it is unpickled

    def __str__(self) -> str:
        return self.url

    def __repr__(self) -> str:
        return f"Store({self.url!r})"

    # --- names ----------------------------------------------------------------------------------------------

    def path(self, *parts: str) -> str:
        """The filesystem path of ``root/parts...`` (``bucket/run/...`` on object storage)."""
        for part in parts:
            segments = part.split("/")
            if part.startswith("/") or any(s in ("", ".", "..") for s in segments):
                raise ValueError(f"{part!r}: a path relative to {self.url} without '', '.' or '..' segments")
        return posixpath.join(self._root, *parts) if parts else self._root

    def uri(self, *parts: str) -> str:
        """What ``fsspec.open``, webdataset and pyarrow take: a local path, or ``s3://bucket/run/...``."""
        path = self.path(*parts)
        return path if self.local else f"{self._protocol}://{path}"

    # --- reading --------------------------------------------------------------------------------------------

    def exists(self, *parts: str) -> bool:
        path = self.path(*parts)
        with transport_errors(self.uri(*parts)):
            self.fs.invalidate_cache(path)
            return bool(self.fs.exists(path))

    def listdir(self, *parts: str) -> list[str]:
        """Names of the files directly under ``root/parts``, sorted; ``[]`` when it does not exist.

        Always a fresh listing: s3fs caches listings, so the cache is invalidated first.
        """
        path = self.path(*parts)
        with transport_errors(self.uri(*parts)):
            self.fs.invalidate_cache(path)
            try:
                entries = self.fs.ls(path, detail=True)
            except (FileNotFoundError, NotADirectoryError):
                return []
        names = (posixpath.basename(e["name"].rstrip("/")) for e in entries if e["type"] == "file")
        return sorted(n for n in names if n)

    def read_bytes(self, *parts: str) -> bytes:
        with transport_errors(self.uri(*parts)):
            return bytes(self.fs.cat_file(self.path(*parts)))

    # --- writing --------------------------------------------------------------------------------------------

    def write_bytes(self, *parts: str, data: bytes) -> None:
        """Write a whole file atomically: readers see the old file or the new one."""
        with self.writing(*parts) as f:
            f.write(data)

    @contextlib.contextmanager
    def writing(self, *parts: str) -> Iterator[IO[bytes]]:
        """An open binary file that appears under ``root/parts`` only if the block exits normally.

        Local: written as ``.{name}.partial`` beside it (``FileExistsError`` if that exists: another writer,
        or a crash not cleaned), fsync'ed and renamed. Object storage: an upload (multipart for big files)
        completed on exit; on an exception it is aborted and nothing appears.
        """
        uri = self.uri(*parts)
        if self.local:
            with self._writing_local(Path(self.path(*parts)), uri) as f:
                yield f
            return
        with transport_errors(uri):
            f = self.fs.open(self.path(*parts), "wb")
        try:
            yield f
        except BaseException:
            with transport_errors(uri):
                f.discard()  # s3fs: aborts the multipart upload if one was started
            f.closed = True  # never flushed, not even by __del__
            raise
        with transport_errors(uri):
            f.close()

    @staticmethod
    @contextlib.contextmanager
    def _writing_local(final: Path, uri: str) -> Iterator[IO[bytes]]:
        tmp = final.with_name(f".{final.name}{_PARTIAL}")
        with transport_errors(uri):
            final.parent.mkdir(parents=True, exist_ok=True)
            f = tmp.open("xb")
        try:
            yield f
            f.flush()
            os.fsync(f.fileno())
            f.close()
            tmp.replace(final)
        except BaseException:
            f.close()
            tmp.unlink(missing_ok=True)
            raise
        _fsync_dir(final.parent)

    def remove(self, *rel_paths: str) -> None:
        """Remove files given relative to the root (``"shards/x.tar"``); missing ones are fine."""
        for rel in rel_paths:
            path = self.path(rel)
            with transport_errors(self.uri(rel)), contextlib.suppress(FileNotFoundError):
                self.fs.rm_file(path)
            self.fs.invalidate_cache(path)

    def clear_partials(self, directory: str = "", prefix: str = "") -> list[str]:
        """Remove what killed writers left of the files in ``directory`` whose names start with ``prefix``:
        local ``.NAME.partial`` files and (S3) unfinished multipart uploads. Returns their paths relative to
        the root, sorted. Call it only when no writer of those names is running."""
        base = f"{directory}/" if directory else ""
        listed = self.listdir(directory) if directory else self.listdir()
        partials = [f"{base}{n}" for n in listed if n.startswith(f".{prefix}") and n.endswith(_PARTIAL)]
        self.remove(*partials)
        root_key = "" if self.local else self._root.partition("/")[2]
        aborted = [key.removeprefix(f"{root_key}/") for key in self.abort_uploads(f"{base}{prefix}")]
        return sorted(partials + aborted)

    # --- unfinished uploads ---------------------------------------------------------------------------------

    def pending_uploads(self, prefix: str = "") -> list[str]:
        """Keys of unfinished multipart uploads under ``root/prefix`` (s3 only; ``[]`` elsewhere), sorted."""
        return sorted(key for key, _ in self._uploads(prefix))

    def abort_uploads(self, prefix: str = "") -> list[str]:
        """Abort the unfinished multipart uploads whose key starts with ``root/prefix``; return their keys.

        A killed writer leaves them behind: invisible to listings, they still cost storage. S3 only (``[]``
        elsewhere: other stores expire uncommitted uploads themselves). Call it only when no writer of that
        prefix is running: it aborts live uploads too.
        """
        uploads = self._uploads(prefix)
        bucket = self._root.split("/", 1)[0]
        with transport_errors(f"{self.url}/{prefix}"):
            for key, upload_id in uploads:
                self.fs.call_s3("abort_multipart_upload", Bucket=bucket, Key=key, UploadId=upload_id)
        return sorted(key for key, _ in uploads)

    def _uploads(self, prefix: str) -> list[tuple[str, str]]:
        if self._protocol not in ("s3", "s3a"):
            return []
        bucket, _, root_key = self._root.partition("/")
        # with no prefix, the run's own keys "run/...", not a sibling run's "run2/..."
        key_prefix = f"{root_key}/{prefix}" if root_key else prefix
        out: list[tuple[str, str]] = []
        page: dict[str, str] = {}
        with transport_errors(f"{self.url}/{prefix}"):
            while True:
                response = self.fs.call_s3("list_multipart_uploads", Bucket=bucket, Prefix=key_prefix, **page)
                out += [(u["Key"], u["UploadId"]) for u in response.get("Uploads", [])]
                if not response.get("IsTruncated"):
                    return out
                page = {
                    "KeyMarker": response["NextKeyMarker"],
                    "UploadIdMarker": response["NextUploadIdMarker"],
                }


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
