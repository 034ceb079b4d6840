"""The curation scores: one name per number, shared by the filters, the manifest and the docs.

Every clip that reaches the filter stage gets every enabled score, kept or not: as manifest columns of the
same name, and in the sample's json under ``curation.scores``. NaN (null in json) means "not measurable"
(time-based scores of a still image) or "not enabled"; a NaN never drops a clip.
"""

from __future__ import annotations

# name -> (unit, what it measures). The order is the order of the checks: gates, what makes a clip unusable
# (black, blank, fades, flashes), then motion, blur, borders, text, and the learned scores.
SCORES: dict[str, tuple[str, str]] = {
    "duration_s": ("s", "the clip's length"),
    "short_side": ("px", "the source's shorter display side"),
    "aspect": ("w/h", "the source's display aspect ratio"),
    "black": ("share", "frames that are near black"),
    "blank": ("share", "frames that are near uniform, of any colour"),
    "fade": ("0..1", "strength of a fade from or to black at the clip's start or end"),
    "flash": ("1/s", "full-frame flashes per second"),
    "luma": ("0..1", "mean luma"),
    "frozen": ("share", "consecutive frame pairs that are identical up to codec noise"),
    "motion": ("short sides/s", "mean optical-flow magnitude (Farneback) between consecutive frames"),
    "motion_patch_min": ("short sides/s", "the least-moving patch of a 4x4 grid (same units as motion)"),
    "frame_diff": ("0..1", "mean absolute luma difference between consecutive frames"),
    "sharpness": ("var", "median variance of the Laplacian of luma at a 128-px short side; low: blurry"),
    "edge_sharpness": ("ratio", "mean |Laplacian| / mean |gradient| on the strongest edges; low: blurry"),
    "active_area": ("share", "the frame's area inside letterbox / pillarbox borders"),
    "text_area": ("share", "frame area covered by detected text (OCR), mean over the sampled frames"),
    "text_frames": ("share", "sampled frames with any detected text"),
    "aesthetic": ("score", "learned aesthetic score (CLIP features + MLP head), mean over frames"),
    "caption_match": ("cosine", "CLIP similarity between the clip's frames and its caption"),
}
