"""Inputs that point elsewhere: small files that ffmpeg, left to itself, reads as the media they name.

``make_reference_trap`` builds them next to two witnesses that say whether anything they name was read: a
``Tripwire`` (a FIFO outside the inputs that serves a real video to whoever opens it, and counts the openings)
and a ``RecordingServer`` (a loopback HTTP server that counts every connection).
"""

from __future__ import annotations

import contextlib
import errno
import functools
import http.server
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.media import ffmpeg

# Each crafted input (``ReferenceTrap.inputs``) and words its probe failure must contain. "remote" is not a
# local file: it is ``ReferenceTrap.remote_url``, an HLS playlist served over HTTP, fetched before probing.
REFUSALS = {
    "hls": "a playlist or reference file (hls)",
    "hls_http": "a playlist or reference file (hls)",
    "ffconcat": "a playlist or reference file (concat)",
    "pattern": "image-sequence pattern name",
    "remote": "a playlist or reference file (hls)",
}


class Tripwire:
    """A FIFO at ``path`` that serves ``video``'s bytes to every reader and counts them in ``opened``.

    A FIFO, not a file, because opening it is observable from any process: a reader's open() is what lets
    the watcher's non-blocking open for writing succeed (it fails with ENXIO while nobody reads).
    """

    def __init__(self, path: Path, video: Path) -> None:
        self.path, self._data = path, video.read_bytes()
        self.opened = 0
        self._error: OSError | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="tripwire", daemon=True)

    def __enter__(self) -> Tripwire:
        os.mkfifo(self.path)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.path.unlink()
        if self._error is not None:
            raise self._error

    def _watch(self) -> None:
        while not self._stop.wait(0.005):
            try:
                fd = os.open(self.path, os.O_WRONLY | os.O_NONBLOCK)
            except OSError as exc:
                if exc.errno == errno.ENXIO:  # nobody has it open for reading
                    continue
                self._error = exc
                return
            self.opened += 1
            os.set_blocking(fd, True)
            left = memoryview(self._data)
            with contextlib.suppress(BrokenPipeError):  # the reader may stop reading early
                while left:
                    left = left[os.write(fd, left) :]
            os.close(fd)


class _Recorder(http.server.SimpleHTTPRequestHandler):
    def handle(self) -> None:
        self.server.connections += 1  # type: ignore[attr-defined]
        super().handle()

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        self.server.requests.append(self.path)  # type: ignore[attr-defined]

    def log_message(self, format: str, *args: Any) -> None:
        pass  # keep the test output clean; requests are recorded by log_request


class RecordingServer:
    """An HTTP server on 127.0.0.1 (port 0) serving ``root``; ``connections`` and ``requests`` (paths) say
    what reached it."""

    def __init__(self, root: Path) -> None:
        self._server = http.server.ThreadingHTTPServer(
            ("127.0.0.1", 0), functools.partial(_Recorder, directory=str(root))
        )
        self._server.connections = 0  # type: ignore[attr-defined]
        self._server.requests = []  # type: ignore[attr-defined]
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, name="recorder", daemon=True)

    @property
    def connections(self) -> int:
        count: int = self._server.connections  # type: ignore[attr-defined]
        return count

    @property
    def requests(self) -> list[str]:
        paths: list[str] = self._server.requests  # type: ignore[attr-defined]
        return paths

    def __enter__(self) -> RecordingServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()


@dataclass
class ReferenceTrap:
    inputs: dict[str, Path]  # name (a key of REFUSALS) -> a crafted local input
    remote_url: str  # an HLS playlist named .mp4 on ``server``, whose segment is also on ``server``
    tripwire: Tripwire  # the real video the local playlists name, outside the inputs
    server: RecordingServer

    def untouched(self) -> bool:
        """Nothing a crafted input names was read: the tripwire never opened, the server got no request but
        for the remote playlist itself."""
        return self.tripwire.opened == 0 and set(self.server.requests) <= {"/remote.mp4"}


def hls_playlist(path: Path, segment: str) -> Path:
    """A one-segment HLS playlist (about 120 bytes) at ``path``, whatever its name, naming ``segment``."""
    path.write_text(f"#EXTM3U\n#EXT-X-TARGETDURATION:2\n#EXTINF:1.0,\n{segment}\n#EXT-X-ENDLIST\n")
    return path


def ffconcat_list(path: Path, entry: str) -> Path:
    """An ffconcat list at ``path`` naming ``entry`` (relative names only: ffmpeg's "safe" mode)."""
    path.write_text(f"ffconcat version 1.0\nfile {entry}\n")
    return path


@contextlib.contextmanager
def make_reference_trap(inputs: Path, outside: Path) -> Iterator[ReferenceTrap]:
    """Crafted inputs under ``inputs``, the real video they name under ``outside`` (another folder):

    - hls: ``clip.mp4``, an HLS playlist whose segment is the tripwire, by absolute path;
    - hls_http: ``stream.mp4``, an HLS playlist whose segment is on the recording server;
    - ffconcat: ``list.mp4``, an ffconcat list naming ``parts/segment``, a symlink to the tripwire;
    - pattern: ``seq/img%03d.png``, a png named as an image-sequence pattern, next to img001.png...img003.png;
    - remote (``remote_url``): an HLS playlist on the server whose segment is on the server too.
    """
    inputs.mkdir(parents=True, exist_ok=True)
    (outside / "www").mkdir(parents=True, exist_ok=True)
    video = outside / "www" / "secret.ts"
    ffmpeg("-f", "lavfi", "-i", "testsrc2=size=160x120:rate=10:d=2", "-c:v", "mpeg2video", str(video))
    with Tripwire(outside / "secret.ts", video) as tripwire, RecordingServer(outside / "www") as server:
        crafted = {
            "hls": hls_playlist(inputs / "clip.mp4", str(tripwire.path)),
            "hls_http": hls_playlist(inputs / "stream.mp4", f"{server.url}/secret.ts"),
            "ffconcat": ffconcat_list(inputs / "list.mp4", "parts/segment"),
        }
        (inputs / "parts").mkdir(exist_ok=True)
        (inputs / "parts" / "segment").symlink_to(tripwire.path)
        (inputs / "seq").mkdir(exist_ok=True)
        still = outside / "still.png"
        ffmpeg("-f", "lavfi", "-i", "testsrc2=size=64x48:d=1", "-frames:v", "1", str(still))
        for name in ("img%03d.png", "img001.png", "img002.png", "img003.png"):
            (inputs / "seq" / name).write_bytes(still.read_bytes())
        crafted["pattern"] = inputs / "seq" / "img%03d.png"
        hls_playlist(outside / "www" / "remote.mp4", f"{server.url}/secret.ts")
        yield ReferenceTrap(crafted, f"{server.url}/remote.mp4", tripwire, server)
