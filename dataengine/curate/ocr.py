"""Burned-in text: RapidOCR's PP-OCR text *detector* (det model only, no recognition), on CPU, offline.

The model is the ONNX file the ``rapidocr`` wheel ships (``rapidocr/models/PP-OCRv6_det_small.onnx``), run
by ``onnxruntime`` through RapidOCR's own pre-processing and DB post-processing; nothing is downloaded.

Legend: ``frame_HWC`` is one uint8 RGB frame; a box is ``(x0, y0, x1, y1)`` in its pixels, end exclusive.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import cv2
import numpy as np
from pydantic import Field

from dataengine.config import Config
from dataengine.model_cache import ModelUnavailableError

DET_MODEL = "PP-OCRv6_det_small.onnx"
_INSTALL = "install the OCR extras: pip install rapidocr onnxruntime"


class OCRConfig(Config):
    short_side: int = Field(
        224, ge=32, description="frames are resized to this short side before detection: small caption "
        "views (112 px) are upscaled so subtitles are tall enough to find, large ones shrunk (cost grows "
        "with area: ~4x per doubling)",
    )  # fmt: skip
    thresh: float = Field(0.3, gt=0, lt=1, description="DB: pixel probability that counts as text")
    box_thresh: float = Field(
        0.6, gt=0, lt=1, description="DB: mean probability a box needs to be kept (RapidOCR's 0.5 "
        "takes lone bars and stripes in textured pictures for words)",
    )  # fmt: skip
    unclip_ratio: float = Field(1.6, gt=0, description="DB: how far a box is grown around its text core")
    max_line_height: float = Field(
        0.5, gt=0, le=1, description="boxes taller than this share of the frame are dropped: on busy, noisy "
        "pictures the detector may return one box around the whole frame; a line of text is never that tall",
    )  # fmt: skip
    threads: int = Field(0, ge=0, description="onnxruntime intra-op threads; 0 = onnxruntime decides")


class TextDetector:
    """Finds text boxes in frames. Cheap to build; ``setup()`` loads the model once per worker.

    Raises:
        ModelUnavailableError: from ``setup()``, when rapidocr/onnxruntime or the shipped model is missing.
    """

    def __init__(self, config: OCRConfig | None = None) -> None:
        self.config = config or OCRConfig()
        self._engine: Any = None

    def setup(self) -> None:
        if self._engine is not None:
            return
        try:
            import rapidocr
        except ImportError as exc:
            raise ModelUnavailableError(f"cannot load the text detector ({exc}); {_INSTALL}") from exc
        model = Path(rapidocr.__file__).parent / "models" / DET_MODEL
        if not model.is_file():
            raise ModelUnavailableError(f"{model} is missing: the rapidocr wheel ships it; {_INSTALL}")
        c = self.config
        params = {
            "Global.use_cls": False,
            "Global.use_rec": False,
            "Global.log_level": "error",
            "Det.model_path": str(model),  # a named file: RapidOCR never downloads
            "Det.limit_side_len": c.short_side,  # frames arrive at this short side
            "Det.limit_type": "min",
            "Det.thresh": c.thresh,
            "Det.box_thresh": c.box_thresh,
            "Det.unclip_ratio": c.unclip_ratio,
            "EngineConfig.onnxruntime.intra_op_num_threads": c.threads or -1,
        }
        try:
            self._engine = rapidocr.RapidOCR(params=params)
            self._engine(np.zeros((32, 32, 3), np.uint8), use_det=True, use_cls=False, use_rec=False)
        except (ImportError, OSError) as exc:  # onnxruntime missing, or the model file unreadable
            self._engine = None
            raise ModelUnavailableError(f"cannot load the text detector {model} ({exc}); {_INSTALL}") from exc

    def boxes(self, frame_HWC: np.ndarray) -> list[tuple[int, int, int, int]]:
        """Axis-aligned boxes ``(x0, y0, x1, y1)`` around the text found in an RGB frame."""
        if self._engine is None:
            raise RuntimeError("TextDetector.setup() must run before boxes()")
        h, w = frame_HWC.shape[:2]
        scale = self.config.short_side / min(h, w)
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        bgr = cv2.resize(
            frame_HWC[..., ::-1], size, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC
        )
        found = self._engine(bgr, use_det=True, use_cls=False, use_rec=False)  # BGR: OpenCV's order
        if found.boxes is None or len(found.boxes) == 0:
            return []
        quads = np.asarray(found.boxes, dtype=np.float64) / [size[0] / w, size[1] / h]  # (N, 4 corners, xy)
        lo = np.floor(quads.min(axis=1)).astype(int)
        hi = np.ceil(quads.max(axis=1)).astype(int)
        lo = np.clip(lo, 0, [w, h])
        hi = np.clip(hi, 0, [w, h])
        return [
            (int(a[0]), int(a[1]), int(b[0]), int(b[1]))
            for a, b in zip(lo, hi, strict=True)
            if b[0] > a[0] and 0 < b[1] - a[1] <= self.config.max_line_height * h
        ]

    def text_area(self, frame_HWC: np.ndarray) -> float:
        """Share of the frame covered by text boxes (their union), 0..1."""
        mask = np.zeros(frame_HWC.shape[:2], dtype=bool)
        for x0, y0, x1, y1 in self.boxes(frame_HWC):
            mask[y0:y1, x0:x1] = True
        return float(mask.mean())
