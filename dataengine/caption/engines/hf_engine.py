"""The transformers engine: ``AutoModelForImageTextToText`` + ``AutoProcessor``, one request at a time.

For debugging and parity checks against vLLM (float32 + greedy give the same tokens), not for throughput.
Guided decoding is not available here: outputs are judged by the same quality gate as every engine's.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

from PIL import Image
from pydantic import Field

from dataengine import model_cache
from dataengine.caption.engines.base import (
    CaptionEngine,
    EngineOutput,
    EngineRequest,
    chat_messages,
    even_frames,
    video_metadata,
)
from dataengine.caption.models import resolve_model
from dataengine.config import Config


class TransformersEngineConfig(Config):
    kind: Literal["transformers"] = "transformers"
    model: str = Field(description="local folder or hub id")
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    device: str = Field("cpu", description="cpu, cuda, cuda:1, ...")


class TransformersEngine(CaptionEngine):
    name = "transformers"
    config: TransformersEngineConfig

    def __init__(self, config: TransformersEngineConfig) -> None:
        super().__init__(config)
        self._model: Any = None
        self._processor: Any = None

    def setup(self) -> None:
        import torch
        from transformers import AutoModelForImageTextToText, AutoProcessor

        dtype = getattr(torch, self.config.dtype)
        path = resolve_model(self.config.model)
        with model_cache.loading(self.config.model, "caption.engine.model"):
            self._model = AutoModelForImageTextToText.from_pretrained(path, dtype=dtype)
            self._processor = AutoProcessor.from_pretrained(path)
        self._model.to(self.config.device).eval()

    def teardown(self) -> None:
        self._model = None
        self._processor = None

    def generate(self, requests: Sequence[EngineRequest]) -> list[EngineOutput]:
        if self._model is None:
            raise RuntimeError("TransformersEngine.generate() before setup()")
        return [self._generate_one(r) for r in requests]

    def _generate_one(self, request: EngineRequest) -> EngineOutput:
        import torch

        messages = chat_messages(request)
        processor_kwargs: dict[str, Any] = {}
        if request.frames is not None and request.modality == "image":
            messages[-1]["content"][0]["image"] = Image.fromarray(request.frames.frames_THWC[0])
        elif request.frames is not None:
            frames_THWC = even_frames(request.frames)
            messages[-1]["content"][0]["video"] = frames_THWC
            metadata = video_metadata(frames_THWC, request.frames.fps)
            metadata.pop("do_sample_frames")  # a processor argument here, not metadata
            processor_kwargs = {"video_metadata": [metadata], "do_sample_frames": False}
        inputs = self._processor.apply_chat_template(
            messages,
            add_generation_prompt=True,
            tokenize=True,
            return_dict=True,
            return_tensors="pt",
            processor_kwargs=processor_kwargs,
        ).to(self.config.device)
        s = request.sampling
        sampling: dict[str, Any] = (
            {"do_sample": True, "temperature": s.temperature, "top_p": s.top_p}
            if s.temperature > 0
            else {"do_sample": False}
        )
        torch.manual_seed(s.seed)
        with torch.inference_mode():
            out = self._model.generate(
                **inputs,
                max_new_tokens=s.max_tokens,
                repetition_penalty=s.repetition_penalty,
                output_scores=True,
                return_dict_in_generate=True,
                **sampling,
            )
            # The processed scores, renormalised: each sampled token's log-prob under the sampling used.
            logprobs = self._model.compute_transition_scores(out.sequences, out.scores, normalize_logits=True)
        new = out.sequences[0, inputs["input_ids"].shape[1] :].tolist()
        eos = self._model.generation_config.eos_token_id
        eos_ids = set(eos if isinstance(eos, list) else [eos])
        finish = "stop" if new and new[-1] in eos_ids else "length" if len(new) >= s.max_tokens else "stop"
        text_out = self._processor.tokenizer.decode(new, skip_special_tokens=True)
        return EngineOutput(
            text=text_out,
            finish_reason=finish,
            prompt_tokens=int(inputs["input_ids"].shape[1]),
            output_tokens=len(new),
            token_ids=tuple(new),
            logprobs=tuple(float(v) for v in logprobs[0, : len(new)].tolist()),
        )
