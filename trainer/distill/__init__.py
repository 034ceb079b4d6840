"""Captioner distillation: train a small Qwen-VL student on (clip, teacher caption) pairs.

The teacher is either the synthetic world's ground truth (``world``: a perfect captioner) or
any captioner whose captions a run wrote to its manifest (a run folder). Every pair goes through exactly
the path the student will be served on: the clip's frames come from the caption view of the decode stage,
the request is the caption stage's own prompt, and the processor and chat template of the student's folder
turn both into tokens; the loss is on the answer (the caption JSON and ``<|im_end|>``) only. The result is
an HF folder (safetensors, processor, chat template) that ``vllm.LLM`` and transformers both load, plus
``distill.json`` (what was trained, how long, the loss) and ``loss_curve.png``.

The student (Qwen3-VL by default, or Qwen2.5-VL) starts from random weights with a tokenizer trained on the
teacher's captions and the prompts, so its vocabulary is the domain's and sequences are short, or goes on
from a student folder (``init``). A new Qwen3-VL student's learned vision position table starts as a 2-D
sine-cosine table at the scale of the patch features (``position_init``): as built it is ~500x smaller
than them after training, and where things are never reaches the text model. ``digit_weight`` lowers the
loss weight of digit tokens, which carry most of the loss of exact-number captions.
"""

from trainer.distill.config import PRESETS, DistillConfig
from trainer.distill.loop import DistillResult, distill
from trainer.distill.pairs import Pair, run_pairs, world_pairs

__all__ = ["PRESETS", "DistillConfig", "DistillResult", "Pair", "distill", "run_pairs", "world_pairs"]
