"""The in-process vLLM engine: ``vllm.LLM`` loaded once per worker, every request of a batch in one call.

This is the main path for batches: the decoded frames go in as numpy arrays with the video metadata Qwen-VL
processors need (no re-encoding, no resampling), a single frame as an image, prompts are built with the
model's own chat template, and guided decoding keeps every output inside the caption schema.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Sequence
from typing import Any, Literal

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


class VLLMEngineConfig(Config):
    kind: Literal["vllm"] = "vllm"
    model: str = Field(description="local folder or hub id")
    dtype: str = Field("auto", description="auto, float32, bfloat16, float16")
    max_model_len: int = Field(8192, ge=256)
    max_num_seqs: int | None = Field(None, ge=1, description="None: vLLM's default")
    gpu_memory_utilization: float = Field(0.9, gt=0, le=1)
    tensor_parallel_size: int = Field(1, ge=1)
    structured_backend: Literal["guidance", "xgrammar", "outlines", "auto"] = Field(
        "guidance", description="guided-decoding backend; guidance handles bounded schemas on CPU and GPU"
    )
    seed: int = 0
    logprobs: bool = Field(True, description="report each sampled token's log-prob (the gate's confidence)")
    env: dict[str, str] = Field(
        default_factory=dict,
        description="environment defaults set before vLLM loads (VLLM_CPU_KVCACHE_SPACE, ...)",
    )
    extra: dict[str, Any] = Field(default_factory=dict, description="more vllm.LLM keyword arguments, as is")


class VLLMEngine(CaptionEngine):
    name = "vllm"
    config: VLLMEngineConfig

    def __init__(self, config: VLLMEngineConfig) -> None:
        super().__init__(config)
        self._llm: Any = None
        self._processor: Any = None

    def setup(self) -> None:
        from transformers import AutoProcessor  # heavy imports stay out of module import
        from vllm import LLM

        cfg = self.config
        for key, value in cfg.env.items():
            os.environ.setdefault(key, value)
        path = resolve_model(cfg.model)
        kwargs: dict[str, Any] = {
            "model": path,
            "dtype": cfg.dtype,
            "max_model_len": cfg.max_model_len,
            "gpu_memory_utilization": cfg.gpu_memory_utilization,
            "tensor_parallel_size": cfg.tensor_parallel_size,
            "limit_mm_per_prompt": {"video": 1, "image": 1},  # a prompt has one or the other
            "structured_outputs_config": {"backend": cfg.structured_backend, "disable_any_whitespace": True},
            "seed": cfg.seed,
            **({"max_num_seqs": cfg.max_num_seqs} if cfg.max_num_seqs else {}),
            **cfg.extra,
        }
        with model_cache.loading(cfg.model, "caption.engine.model"):
            self._llm = LLM(**kwargs)
            self._processor = AutoProcessor.from_pretrained(path)

    def teardown(self) -> None:
        self._llm = None
        self._processor = None

    def generate(self, requests: Sequence[EngineRequest]) -> list[EngineOutput]:
        if self._llm is None:
            raise RuntimeError("VLLMEngine.generate() before setup()")
        if not requests:
            return []
        prompts = [self.prompt_input(r) for r in requests]
        params = [self.sampling_params(r, self.config.logprobs) for r in requests]
        results = self._llm.generate(prompts, params, use_tqdm=False)
        return [_output(result) for result in results]

    def generate_until(
        self,
        requests: Sequence[EngineRequest],
        on_output: Callable[[int, EngineOutput], EngineRequest | None],
    ) -> None:
        """Continuous batching: a retry joins the running batch as soon as its output has been judged."""
        from vllm.sampling_params import RequestOutputKind

        if self._llm is None:
            raise RuntimeError("VLLMEngine.generate_until() before setup()")
        engine = self._llm.llm_engine
        batch = uuid.uuid4().hex[:8]
        owner: dict[str, int] = {}

        def submit(index: int, request: EngineRequest) -> None:
            request_id = f"dataengine-{batch}-{len(owner)}"
            params = self.sampling_params(request, self.config.logprobs)
            params.output_kind = RequestOutputKind.FINAL_ONLY
            owner[request_id] = index
            engine.add_request(request_id, self.prompt_input(request), params)

        for index, request in enumerate(requests):
            submit(index, request)
        while engine.has_unfinished_requests():
            for result in engine.step():
                if result.finished and result.request_id in owner:
                    index = owner[result.request_id]
                    follow_up = on_output(index, _output(result))
                    if follow_up is not None:
                        submit(index, follow_up)

    def prompt_input(self, request: EngineRequest) -> dict[str, Any]:
        """The vLLM prompt dict: chat-template text plus the frames and their metadata for video prompts, or
        the one frame for image prompts."""
        text = self._processor.apply_chat_template(
            chat_messages(request), add_generation_prompt=True, tokenize=False
        )
        if request.frames is None:
            return {"prompt": text}
        if request.modality == "image":
            return {"prompt": text, "multi_modal_data": {"image": request.frames.frames_THWC[0]}}
        frames_THWC = even_frames(request.frames)
        video = (frames_THWC, video_metadata(frames_THWC, request.frames.fps))
        return {"prompt": text, "multi_modal_data": {"video": video}}

    @staticmethod
    def sampling_params(request: EngineRequest, logprobs: bool = True) -> Any:
        """vLLM sampling parameters; ``logprobs``: ask for the sampled token's log-prob at every step."""
        from vllm import SamplingParams
        from vllm.sampling_params import StructuredOutputsParams

        s = request.sampling
        structured = StructuredOutputsParams(json=request.schema) if request.schema is not None else None
        return SamplingParams(
            temperature=s.temperature,
            top_p=s.top_p,
            max_tokens=s.max_tokens,
            repetition_penalty=s.repetition_penalty,
            seed=s.seed,
            structured_outputs=structured,
            logprobs=0 if logprobs else None,  # 0: the sampled token's own, no alternatives
        )


def _output(result: Any) -> EngineOutput:
    completion = result.outputs[0]
    return EngineOutput(
        text=completion.text,
        finish_reason=completion.finish_reason,
        prompt_tokens=len(result.prompt_token_ids or ()),
        output_tokens=len(completion.token_ids),
        token_ids=tuple(completion.token_ids),
        logprobs=_sampled_logprobs(completion),
    )


def _sampled_logprobs(completion: Any) -> tuple[float, ...]:
    """Each generated token's log-prob, from vLLM's per-step ``{token_id: Logprob}`` maps."""
    steps = completion.logprobs
    if not steps:
        return ()
    return tuple(float(step[token].logprob) for step, token in zip(steps, completion.token_ids, strict=True))
