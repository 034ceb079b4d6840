"""Caption: decoded clips -> structured, quality-gated, reconstruction-grade captions.

DecodedClip --> CaptionedClip | Failure(stage="caption"). One engine call carries every clip of the batch
(and every window of long clips). Each output goes through the quality gate; rejected ones are generated
again with changed sampling (a higher temperature and a new seed) up to ``max_attempts`` times, and a clip
that never passes is recorded with the reasons of every attempt. Clips with more frames than
``window_frames`` are captioned window by window, then the window captions are fused by a text-only pass
through the same engine, which goes through the same gate. A still image (``probe.is_image``, one frame) is
captioned with ``image_prompt_id`` into the same schema, as a shot of its nominal one second.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from pydantic import Field

from dataengine.caption.engines import CaptionEngine, EngineConfig, build_engine
from dataengine.caption.engines.base import EngineOutput, EngineRequest, SamplingConfig
from dataengine.caption.prompts import Prompt, get_prompt
from dataengine.caption.quality import QualityConfig, Scores, judge
from dataengine.caption.schema import (
    SCHEMA_VERSION,
    StructuredCaption,
    json_schema,
    render_caption,
    render_short,
)
from dataengine.caption.signals import Confidence
from dataengine.config import Config
from dataengine.records import Caption, CaptionedClip, DecodedClip, Failure, Frames
from dataengine.stages.base import Stage
from dataengine.world.verify import WorldRedrawConfig, redraw_problem


class CaptionConfig(Config):
    engine: EngineConfig
    view: str = Field("caption", description="which decoded view is captioned")
    prompt_id: str = "dense-v1"
    image_prompt_id: str = Field("dense-image-v1", description="the prompt for still images")
    fuse_prompt_id: str = "fuse-v1"
    enhance_prompt_id: str = "enhance-v1"
    sampling: SamplingConfig = Field(default_factory=SamplingConfig)
    guided: bool = Field(True, description="constrain output to the caption JSON schema")
    window_frames: int = Field(16, ge=2, description="longer views are captioned in windows, then fused")
    max_attempts: int = Field(3, ge=1, description="generations per caption before recording a failure")
    retry_temperature: float = Field(0.7, gt=0, description="temperature of the first retry; +0.15 per retry")
    quality: QualityConfig = Field(default_factory=QualityConfig)
    verify: WorldRedrawConfig | None = Field(
        None,
        description="check each window's caption against its frames (a captioner of a world we can draw)",
    )


@dataclass
class _Job:
    """One caption to produce: a window of a clip's frames, or the fusion of a clip's windows."""

    clip: int
    request: EngineRequest
    duration_s: float | None  # the span the caption covers, to check event times against
    frame_size: tuple[int, int] | None = None  # the clip's (width, height), for verification
    origin_s: float = 0.0  # the source time the caption's time 0 stands for
    reasons: list[str] = field(default_factory=list)
    result: StructuredCaption | None = None
    scores: Scores | None = None  # the gate's numbers for the accepted output
    redraw_psnr: float | None = None
    tokens: int = 0


class CaptionStage(Stage[DecodedClip, CaptionedClip]):
    name = "caption"
    input_type = DecodedClip
    output_type = CaptionedClip
    config: CaptionConfig

    def __init__(self, config: CaptionConfig, engine: CaptionEngine | None = None) -> None:
        """``engine``: an engine that is already set up, to share (a server, a test session); the stage then
        neither sets it up nor tears it down. Without it the stage builds one from ``config.engine``."""
        super().__init__(config)
        self._owns_engine = engine is None
        self.engine: CaptionEngine = engine if engine is not None else build_engine(config.engine)

    def setup(self) -> None:
        if self._owns_engine:
            self.engine.setup()

    def teardown(self) -> None:
        if self._owns_engine:
            self.engine.teardown()

    def process_batch(self, batch: Sequence[DecodedClip]) -> list[CaptionedClip | Failure]:
        started = time.perf_counter()
        windows = [self._window_jobs(i, d) for i, d in enumerate(batch)]
        self._run([job for jobs in windows for job in jobs])
        fused: dict[int, _Job] = {}
        for i, jobs in enumerate(windows):
            if len(jobs) > 1 and all(job.result is not None for job in jobs):
                fused[i] = self._fuse_job(i, batch[i], jobs)
        self._run(list(fused.values()))
        seconds = (time.perf_counter() - started) / max(1, len(batch))
        return [self._result(d, windows[i], fused.get(i), seconds) for i, d in enumerate(batch)]

    def enhance(self, short_captions: Sequence[str]) -> list[StructuredCaption | str]:
        """Rewrite short captions (titles, alt text) as structured captions with a text-only pass.

        Returns, per input, the structured caption or the reasons it failed the quality gate.
        """
        prompt = get_prompt(self.config.enhance_prompt_id)
        jobs = [self._job(i, prompt, prompt.render(caption=text)) for i, text in enumerate(short_captions)]
        self._run(jobs)
        return [job.result if job.result is not None else "; ".join(job.reasons) for job in jobs]

    def _window_jobs(self, i: int, decoded: DecodedClip) -> list[_Job]:
        is_image = decoded.clip.probe.is_image
        prompt = get_prompt(self.config.image_prompt_id if is_image else self.config.prompt_id)
        jobs = []
        probe = decoded.clip.probe
        for k, part in enumerate(_windows(decoded.views[self.config.view], self.config.window_frames)):
            t = len(part.frames_THWC)
            text = prompt.render(duration_s=t / part.fps, n_frames=t, fps=part.fps)
            job = self._job(i, prompt, text, t / part.fps, part)
            job.frame_size = (probe.width, probe.height)
            job.origin_s = decoded.clip.start_s if k == 0 else float(part.timestamps_s[0])
            jobs.append(job)
        return jobs

    def _job(
        self, i: int, prompt: Prompt, text: str, duration_s: float | None = None, frames: Frames | None = None
    ) -> _Job:
        schema = json_schema(duration_s) if self.config.guided else None
        request = EngineRequest(prompt, text, frames, schema, self.config.sampling)
        return _Job(i, request, duration_s)

    def _fuse_job(self, i: int, decoded: DecodedClip, jobs: list[_Job]) -> _Job:
        prompt = get_prompt(self.config.fuse_prompt_id)
        start = decoded.views[self.config.view].timestamps_s[0]
        lines = []
        for job in jobs:
            assert job.result is not None and job.request.frames is not None
            offset = job.request.frames.timestamps_s[0] - start
            lines.append(f"[{offset:.1f} s] {job.result.model_dump_json()}")
        text = prompt.render(duration_s=decoded.clip.duration_s, windows="\n".join(lines))
        return self._job(i, prompt, text, decoded.clip.duration_s)

    def _run(self, jobs: list[_Job]) -> None:
        """Generate ``jobs``; regenerate rejected ones with changed sampling until they pass or run out."""

        def on_output(k: int, out: EngineOutput) -> EngineRequest | None:
            job = jobs[k]
            job.tokens += out.output_tokens
            verdict = (
                None
                if out.error
                else judge(out.text, out.finish_reason, self.config.quality, job.duration_s, out.logprobs)
            )
            mismatch = self._verify(job, verdict.caption) if verdict is not None and verdict.caption else None
            if verdict is not None and verdict.ok and mismatch is None:
                job.result, job.scores = verdict.caption, verdict.scores
                return None
            job.reasons.append(out.error or mismatch or (verdict.reason if verdict else None) or "rejected")
            attempts = len(job.reasons)
            return self._resampled(job.request, attempts) if attempts < self.config.max_attempts else None

        if jobs:
            self.engine.generate_until([job.request for job in jobs], on_output)

    def _verify(self, job: _Job, caption: StructuredCaption) -> str | None:
        """Why ``caption`` does not describe its window's frames (``config.verify``), or None."""
        frames, size = job.request.frames, job.frame_size
        if self.config.verify is None or frames is None or size is None:
            return None
        problem, job.redraw_psnr = redraw_problem(caption, frames, job.origin_s, *size, self.config.verify)
        return problem

    def _resampled(self, request: EngineRequest, attempt: int) -> EngineRequest:
        if attempt == 0:
            return request
        base = request.sampling
        sampling = base.model_copy(update={
            "temperature": self.config.retry_temperature + 0.15 * (attempt - 1),
            "seed": base.seed + 1000 * attempt,
        })  # fmt: skip
        return EngineRequest(request.prompt, request.text, request.frames, request.schema, sampling)

    def _result(
        self, decoded: DecodedClip, windows: list[_Job], fused: _Job | None, seconds: float
    ) -> CaptionedClip | Failure:
        jobs = [*windows, *([fused] if fused else [])]
        final = fused if len(windows) > 1 else windows[0]
        if final is None or final.result is None:
            failed = [job for job in jobs if job.result is None]
            what = "fusion" if fused is not None else f"{len(failed)} of {len(windows)} windows"
            reasons = "; ".join(dict.fromkeys(r for job in failed for r in job.reasons))
            reason = f"{what} failed the quality gate after {self.config.max_attempts} attempts: {reasons}"
            return Failure.of(decoded.clip, "caption", reason)
        prompt_id = windows[0].request.prompt.id
        if fused is not None:
            prompt_id = f"{prompt_id}+{fused.request.prompt.id}"
        confidence = Confidence.merge([job.scores.confidence if job.scores else None for job in jobs])
        caption = Caption(
            caption=render_caption(final.result),
            short_caption=render_short(final.result),
            structured=final.result.model_dump(mode="json"),
            engine=self.engine.name,
            model=self.engine.model_id,
            prompt_id=prompt_id,
            schema_version=SCHEMA_VERSION,
            attempts=max(len(job.reasons) + 1 for job in jobs),
            windows=len(windows),
            output_tokens=sum(job.tokens for job in jobs),
            seconds=seconds,
            mean_logprob=confidence.mean_logprob if confidence else None,
            min_window_logprob=confidence.min_window_logprob if confidence else None,
            compression_ratio=final.scores.compression_ratio if final.scores else 0.0,
            redraw_psnr=min((j.redraw_psnr for j in windows if j.redraw_psnr is not None), default=None),
        )
        return CaptionedClip(decoded=decoded, caption=caption)


def _windows(frames: Frames, size: int) -> list[Frames]:
    """``frames`` cut into the fewest windows of at most ``size`` frames, as equal in length as possible."""
    t = len(frames.frames_THWC)
    n = -(-t // size)
    bounds = np.linspace(0, t, n + 1).round().astype(int)
    return [
        Frames(frames.frames_THWC[a:b], frames.fps, frames.timestamps_s[a:b])
        for a, b in itertools.pairwise(bounds)
    ]
