"""Input expansion and fetching against real local files, a local HTTP server and a local moto S3 server."""

from __future__ import annotations

import functools
import http.server
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import s3fs

from dataengine.inputs import VIDEO_EXTENSIONS, InputsConfig, fetch, iter_sources
from dataengine.records import Failure, Source, normalize_uri, video_id_for
from tests.crafted import Tripwire

BUCKET = "inputs-test"


def _sources(specs: list[str], config: InputsConfig) -> list[Source]:
    out = list(iter_sources(specs, config))
    assert all(isinstance(item, Source) for item in out), out
    return [item for item in out if isinstance(item, Source)]


def _uris(items: list[Source]) -> list[str]:
    return [item.uri for item in items]


def _touch(root: Path, *names: str) -> None:
    for name in names:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(name.encode())


@pytest.fixture
def config(tmp_path: Path) -> InputsConfig:
    return InputsConfig(cache_dir=tmp_path / "cache")


# ------------------------------------------------------------------------------------------------- local


def test_explicit_file_is_one_source_whatever_its_extension(tmp_path: Path, config: InputsConfig) -> None:
    _touch(tmp_path, "notes.dat")
    [source] = _sources([str(tmp_path / "notes.dat")], config)
    assert source == Source.from_uri(tmp_path / "notes.dat")
    assert fetch(source, config) == tmp_path / "notes.dat"  # local: no copy
    _touch(tmp_path, "take[1]?.mp4")  # glob characters in an existing name are literal
    [source] = _sources([str(tmp_path / "take[1]?.mp4")], config)
    assert source.uri == normalize_uri(tmp_path / "take[1]?.mp4") and source.local_path.is_file()


def test_directory_walk_filters_extensions_in_sorted_order(tmp_path: Path, config: InputsConfig) -> None:
    _touch(tmp_path, "b.MP4", "a.mov", "readme.txt", "sub/z/c.webm", "sub/a.json", "sub/b.mkv", ".hidden.mp4")
    got = _uris(_sources([str(tmp_path), f"file://{tmp_path}/sub"], config))
    expected = ["a.mov", "b.MP4", "sub/b.mkv", "sub/z/c.webm", "sub/b.mkv", "sub/z/c.webm"]
    assert got == [normalize_uri(tmp_path / name) for name in expected]


def test_directory_walk_keeps_images_by_default(tmp_path: Path, config: InputsConfig) -> None:
    _touch(tmp_path, "a.png", "b.JPG", "c.jpeg", "d.webp", "e.tiff", "f.mp4", "notes.md", "g.bmp", "h.ppm")
    got = _uris(_sources([str(tmp_path)], config))
    kept = ["a.png", "b.JPG", "c.jpeg", "d.webp", "e.tiff", "f.mp4", "g.bmp", "h.ppm"]
    assert got == [normalize_uri(tmp_path / name) for name in kept]
    videos_only = config.model_copy(update={"extensions": VIDEO_EXTENSIONS})
    assert _uris(_sources([str(tmp_path)], videos_only)) == [normalize_uri(tmp_path / "f.mp4")]


def test_directory_walk_yields_file_symlinks_but_not_directory_symlinks(
    tmp_path: Path, config: InputsConfig
) -> None:
    _touch(tmp_path, "videos/a.mp4")
    (tmp_path / "videos" / "dangling.mp4").symlink_to(tmp_path / "gone.mp4")
    (tmp_path / "videos" / "loop").symlink_to(tmp_path / "videos")  # would recurse forever if followed
    got = _uris(_sources([str(tmp_path / "videos")], config))
    assert got == [normalize_uri(tmp_path / "videos" / n) for n in ("a.mp4", "dangling.mp4")]


def test_glob_with_double_star(tmp_path: Path, config: InputsConfig) -> None:
    _touch(tmp_path, "a/x.mp4", "a/b/y.mp4", "a/b/c/z.mov", "a/b/n.gif", "top.mp4")
    got = _uris(_sources([f"{tmp_path}/a/**/*.mp4", f"{tmp_path}/a/*/*"], config))
    mp4 = [normalize_uri(tmp_path / n) for n in ("a/b/y.mp4", "a/x.mp4")]
    one_level = [normalize_uri(tmp_path / n) for n in ("a/b/n.gif", "a/b/y.mp4")]
    assert got == mp4 + one_level


def test_a_spec_that_matches_nothing_is_recorded(tmp_path: Path, config: InputsConfig) -> None:
    (tmp_path / "empty").mkdir()
    for spec in (f"{tmp_path}/nothing/*.mp4", f"{tmp_path}/empty"):
        (failure,) = iter_sources([spec], config)
        assert isinstance(failure, Failure) and failure.stage == "input"
        assert "matched no files with extensions .mp4" in failure.reason


def test_missing_local_path_is_still_a_source(tmp_path: Path, config: InputsConfig) -> None:
    assert _sources([str(tmp_path / "missing.mp4")], config) == [Source.from_uri(tmp_path / "missing.mp4")]


def test_unsupported_scheme_raises(config: InputsConfig) -> None:
    with pytest.raises(ValueError, match=r"'ftp'.*s3://"):
        list(iter_sources(["ftp://host/video.mp4"], config))


def test_txt_list_skips_comments_and_resolves_relative_paths(tmp_path: Path, config: InputsConfig) -> None:
    _touch(tmp_path, "lists/clips/a.mp4")
    lines = [
        "# header",
        "",
        "clips/a.mp4",
        "  ../b.mov  ",
        f"{tmp_path}/abs.mkv",
        "https://h/v.mp4?sig=1",
        "ftp://h/x",
    ]
    (tmp_path / "lists" / "in.lst").write_text("\n".join(lines))
    *sources, failure = iter_sources([str(tmp_path / "lists" / "in.lst")], config)
    assert [source.uri for source in sources] == [
        normalize_uri(tmp_path / "lists/clips/a.mp4"),
        normalize_uri(tmp_path / "b.mov"),
        normalize_uri(tmp_path / "abs.mkv"),
        "https://h/v.mp4?sig=1",
    ]
    assert isinstance(failure, Failure) and failure.uri.endswith("in.lst#L7") and "'ftp'" in failure.reason


def test_jsonl_list_turns_malformed_lines_into_failures(tmp_path: Path, config: InputsConfig) -> None:
    lines = [
        '{"uri": "a.mp4"}',
        "{not json",
        '{"path": "b.mp4", "x": 1}',
        '{"name": "c.mp4"}',
        '{"url": "s3://b/k"}',
    ]
    (tmp_path / "in.jsonl").write_text("\n".join(lines) + "\n")
    out = list(iter_sources([str(tmp_path / "in.jsonl")], InputsConfig()))
    assert [item.uri for item in out if isinstance(item, Source)] == [
        normalize_uri(tmp_path / "a.mp4"),
        normalize_uri(tmp_path / "b.mp4"),
        "s3://b/k",
    ]
    failures = [item for item in out if isinstance(item, Failure)]
    list_uri = normalize_uri(tmp_path / "in.jsonl")
    assert [f.uri for f in failures] == [f"{list_uri}#L2", f"{list_uri}#L4"]
    assert all(f.stage == "input" for f in failures)
    assert "invalid JSON" in failures[0].reason and '"uri"' in failures[1].reason
    assert len({f.video_id for f in failures} | {video_id_for(list_uri)}) == 3  # one id per line


def test_parquet_list(tmp_path: Path, config: InputsConfig) -> None:
    table = pa.table({"path": ["a.mp4", None, "/abs/b.mp4"], "size": [1, 2, 3]})
    pq.write_table(table, tmp_path / "in.parquet", row_group_size=2)
    out = list(iter_sources([str(tmp_path / "in.parquet")], config))
    assert [item.uri for item in out] == [
        normalize_uri(tmp_path / "a.mp4"),
        f"{normalize_uri(tmp_path / 'in.parquet')}#row1",
        "file:///abs/b.mp4",
    ]
    assert isinstance(out[1], Failure)


def test_missing_list_file_is_a_failure(tmp_path: Path, config: InputsConfig) -> None:
    [failure] = list(iter_sources([str(tmp_path / "gone.txt")], config))
    assert isinstance(failure, Failure) and "not found" in failure.reason


def test_config_is_strict() -> None:
    assert InputsConfig(extensions=("MP4", ".Mov")).extensions == (".mp4", ".mov")
    with pytest.raises(ValueError, match="storage_options"):
        InputsConfig(storage_options={"endpoint_url": {}})
    with pytest.raises(ValueError, match="extra"):
        InputsConfig(extension=(".mp4",))  # type: ignore[call-arg]


# -------------------------------------------------------------------------------------------------- http


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def do_GET(self) -> None:
        if self.path.startswith("/broken/"):
            self.send_error(500)
        else:
            super().do_GET()

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def http_root(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    root = tmp_path / "www"
    root.mkdir()
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(_QuietHandler, directory=str(root))
    )
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", root
    server.shutdown()
    server.server_close()
    thread.join()


def test_http_source_and_fetch(http_root: tuple[str, Path], config: InputsConfig) -> None:
    base, root = http_root
    (root / "v.mp4").write_bytes(b"\x00video-bytes" * 1000)
    [source] = _sources([f"{base}/v.mp4"], config)
    assert source.uri == f"{base}/v.mp4"
    path = fetch(source, config)
    assert path == config.cache_dir / f"{source.video_id}.mp4"
    assert path.read_bytes() == (root / "v.mp4").read_bytes()
    assert [p.name for p in config.cache_dir.iterdir()] == [path.name]  # no partial file left behind
    with pytest.raises(FileNotFoundError):
        fetch(Source.from_uri(f"{base}/missing.mp4"), config)
    with pytest.raises(OSError, match="500"):
        fetch(Source.from_uri(f"{base}/broken/v.mp4"), config)
    assert [p.name for p in config.cache_dir.iterdir()] == [path.name]


def test_http_list_file(http_root: tuple[str, Path], config: InputsConfig) -> None:
    base, root = http_root
    (root / "lists").mkdir()
    (root / "lists" / "in.txt").write_text("a.mp4\nhttps://cdn.example/b.mp4\n")
    assert _uris(_sources([f"{base}/lists/in.txt"], config)) == [
        f"{base}/lists/a.mp4",
        "https://cdn.example/b.mp4",
    ]


# ------------------------------------------------------------------------------------------- confinement


@pytest.fixture
def confined(tmp_path: Path) -> tuple[Path, Path, InputsConfig]:
    """An allowed root, a folder beside it, and a config confined to the root over file and http."""
    root, outside = tmp_path / "root", tmp_path / "outside"
    _touch(root, "a.mp4")
    _touch(outside, "secret.mp4")
    config = InputsConfig(
        cache_dir=tmp_path / "cache", allowed_roots=(root,), allowed_schemes=("file", "http")
    )
    return root, outside, config


def _refused(item: Source | Failure, uri: str, words: str) -> bool:
    return isinstance(item, Failure) and item.stage == "input" and item.uri == uri and words in item.reason


def test_a_list_inside_the_root_cannot_name_files_outside(confined: tuple[Path, Path, InputsConfig]) -> None:
    root, outside, config = confined
    secret = outside / "secret.mp4"
    (root / "in.txt").write_text(f"a.mp4\n{secret}\nfile://{secret}\n../outside/secret.mp4\ns3://b/k.mp4\n")
    inside, *refused, remote = iter_sources([str(root / "in.txt")], config)
    assert inside == Source.from_uri(root / "a.mp4")
    assert len(refused) == 3 and all(
        _refused(f, normalize_uri(secret), "outside the allowed roots") for f in refused
    )
    assert _refused(remote, "s3://b/k.mp4", "scheme 's3' is not allowed")


def test_a_remote_list_cannot_name_local_files_outside(
    http_root: tuple[str, Path], confined: tuple[Path, Path, InputsConfig]
) -> None:
    base, www = http_root
    root, outside, config = confined
    secret = outside / "secret.mp4"
    (www / "in.txt").write_text(f"{root}/a.mp4\n{secret}\nfile://{secret}\nb.mp4\n")
    inside, *refused, relative = iter_sources([f"{base}/in.txt"], config)
    assert inside == Source.from_uri(root / "a.mp4") and relative == Source.from_uri(f"{base}/b.mp4")
    assert len(refused) == 2 and all(
        _refused(f, normalize_uri(secret), "outside the allowed roots") for f in refused
    )
    no_http = config.model_copy(update={"allowed_schemes": ("file",)})
    [list_refused] = iter_sources([f"{base}/in.txt"], no_http)  # the list itself is not fetched
    assert _refused(list_refused, f"{base}/in.txt", "scheme 'http' is not allowed")


def test_walking_the_root_refuses_file_symlinks_that_lead_out(
    confined: tuple[Path, Path, InputsConfig],
) -> None:
    root, outside, config = confined
    (root / "b_out.mp4").symlink_to(outside / "secret.mp4")
    (root / "c_in.mp4").symlink_to(root / "a.mp4")
    (root / "d_up.mp4").symlink_to("../outside/secret.mp4")
    (root / "e_loop.mp4").symlink_to(root / "e_loop.mp4")
    a, b, c, d, e = iter_sources([str(root)], config)
    assert a == Source.from_uri(root / "a.mp4") and c == Source.from_uri(root / "c_in.mp4")
    assert _refused(b, normalize_uri(root / "b_out.mp4"), "outside the allowed roots")
    assert _refused(d, normalize_uri(root / "d_up.mp4"), "outside the allowed roots")
    assert isinstance(e, Failure) and e.stage == "input"
    globbed = iter_sources([f"{root}/*_out.mp4", f"{root}/../outside/*.mp4"], config)
    assert [item.uri for item in globbed if isinstance(item, Failure)] == [
        normalize_uri(root / "b_out.mp4"),
        normalize_uri(outside / "*.mp4"),
    ]


def test_a_spec_outside_the_roots_is_refused_before_it_is_opened(
    confined: tuple[Path, Path, InputsConfig],
) -> None:
    root, outside, config = confined
    (root / "lists").symlink_to(outside)
    witness = outside / "witness.mp4"
    witness.write_bytes(b"list bytes")
    with Tripwire(outside / "in.txt", witness) as tripwire:  # a list file that counts its readers
        specs = [str(outside / "in.txt"), str(root / "lists" / "in.txt"), str(outside), f"{root}/../outside"]
        items = list(iter_sources(specs, config))
        assert tripwire.opened == 0
    assert [item.uri for item in items] == [normalize_uri(s) for s in specs]
    assert all(_refused(item, item.uri, "outside the allowed roots") for item in items)
    files_only = config.model_copy(update={"allowed_schemes": ("http",)})
    [local] = iter_sources([str(root / "a.mp4")], files_only)
    assert _refused(local, normalize_uri(root / "a.mp4"), "local paths are not allowed")


def test_fetch_refuses_what_the_roots_do_not_hold_and_opens_the_resolved_path(
    confined: tuple[Path, Path, InputsConfig],
) -> None:
    root, outside, config = confined
    (root / "link.mp4").symlink_to(root / "a.mp4")
    assert fetch(Source.from_uri(root / "link.mp4"), config) == root / "a.mp4"
    with Tripwire(outside / "fifo.mp4", outside / "secret.mp4") as tripwire:
        (root / "out.mp4").symlink_to(tripwire.path)
        for source in (Source.from_uri(tripwire.path), Source.from_uri(root / "out.mp4")):
            with pytest.raises(PermissionError, match="outside the allowed roots"):
                fetch(source, config)
        assert tripwire.opened == 0
    with pytest.raises(PermissionError, match="scheme 's3' is not allowed"):
        fetch(Source.from_uri("s3://b/k.mp4"), config)
    assert not config.cache_dir.exists()


def test_confinement_config(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    (tmp_path / "alias").symlink_to(tmp_path / "real")
    config = InputsConfig(allowed_roots=(tmp_path / "alias",), allowed_schemes=("file",))
    assert config.allowed_roots == ((tmp_path / "real").resolve(),)
    assert InputsConfig().allowed_roots is None and InputsConfig().allowed_schemes is None  # unconfined
    with pytest.raises(ValueError, match="allowed_schemes"):
        InputsConfig(allowed_schemes=("ftp",))


# ---------------------------------------------------------------------------------------------------- s3


@pytest.fixture(scope="session")
def inputs_bucket(s3_options: dict[str, Any]) -> str:
    """BUCKET on the session's moto server (tests/conftest.py), filled with a few objects."""
    client = boto3.client("s3", endpoint_url=s3_options["endpoint_url"], region_name="us-east-1")
    client.create_bucket(Bucket=BUCKET)
    for key in ("videos/a.mp4", "videos/b.txt", "videos/sub/c.MOV", "videos/sub/d.json", "other/e.mp4"):
        client.put_object(Bucket=BUCKET, Key=key, Body=key.encode() * 100)
    return BUCKET


@pytest.fixture
def s3_config(tmp_path: Path, s3_options: dict[str, Any], inputs_bucket: str) -> InputsConfig:
    return InputsConfig(cache_dir=tmp_path / "cache", storage_options={"s3": s3_options})


def test_s3_prefix_lists_only_videos(s3_config: InputsConfig) -> None:
    expected = [f"s3://{BUCKET}/videos/a.mp4", f"s3://{BUCKET}/videos/sub/c.MOV"]
    assert _uris(_sources([f"s3://{BUCKET}/videos"], s3_config)) == expected
    assert _uris(_sources([f"s3://{BUCKET}/videos/"], s3_config)) == expected
    assert _uris(_sources([f"s3://{BUCKET}/videos/a.mp4"], s3_config)) == expected[:1]


def test_s3_glob(s3_config: InputsConfig) -> None:
    got = _uris(_sources([f"s3://{BUCKET}/**/*.mp4", f"s3://{BUCKET}/videos/s?b/*"], s3_config))
    assert got == [
        f"s3://{BUCKET}/other/e.mp4",
        f"s3://{BUCKET}/videos/a.mp4",
        f"s3://{BUCKET}/videos/sub/c.MOV",
    ]


def test_s3_fetch_downloads_once_and_reuses_the_cache(s3_config: InputsConfig) -> None:
    source = Source.from_uri(f"s3://{BUCKET}/videos/sub/c.MOV")
    path = fetch(source, s3_config)
    assert path.name == f"{source.video_id}.MOV"
    assert path.read_bytes() == b"videos/sub/c.MOV" * 100
    path.write_bytes(b"cached")  # a second fetch must not download again
    assert fetch(source, s3_config).read_bytes() == b"cached"


def test_s3_missing_key(s3_config: InputsConfig) -> None:
    [source] = _sources([f"s3://{BUCKET}/videos/missing.mp4"], s3_config)
    with pytest.raises(FileNotFoundError):
        fetch(source, s3_config)
    assert not s3_config.cache_dir.exists() or not any(s3_config.cache_dir.iterdir())


def test_s3_parquet_list(s3_config: InputsConfig, s3_options: dict[str, Any], tmp_path: Path) -> None:
    pq.write_table(pa.table({"uri": ["videos/a.mp4", "s3://elsewhere/x.mp4"]}), tmp_path / "l.parquet")
    s3fs.S3FileSystem(**s3_options).put_file(str(tmp_path / "l.parquet"), f"{BUCKET}/lists/l.parquet")
    got = _uris(_sources([f"s3://{BUCKET}/lists/l.parquet"], s3_config))
    assert got == [f"s3://{BUCKET}/lists/videos/a.mp4", "s3://elsewhere/x.mp4"]


def test_s3_jsonl_list_and_endpoint_in_client_kwargs(
    s3_options: dict[str, Any], inputs_bucket: str, tmp_path: Path
) -> None:
    options = {k: v for k, v in s3_options.items() if k != "endpoint_url"}
    options["client_kwargs"] = {**options["client_kwargs"], "endpoint_url": s3_options["endpoint_url"]}
    config = InputsConfig(cache_dir=tmp_path, storage_options={"s3": options})
    s3fs.S3FileSystem(**s3_options).pipe(
        f"{BUCKET}/lists/l.jsonl", json.dumps({"uri": "/data/v.mp4"}).encode()
    )
    assert _uris(_sources([f"s3://{BUCKET}/lists/l.jsonl"], config)) == ["file:///data/v.mp4"]
