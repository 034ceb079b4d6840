"""The ``dataengine`` command line: the front door. Nothing imports this package; each command is a few lines
that hand over to the layer owning the work (``dataengine``, ``pipelines``, ``trainer``, ``services``).

    dataengine synth --out data/synth --n 8          # procedural videos + ground-truth JSON
    dataengine probe data/synth                      # what ffprobe says, or why a file cannot be used
    dataengine clips data/synth --out out/clips      # probe -> split -> decode, with a contact sheet
    dataengine run data/synth --out out/run          # inputs -> captions -> latents -> shards, on Ray
    dataengine inspect out/run                       # counts, reasons, distributions, a contact sheet
    dataengine train --shards out/run --out out/dit  # the DiT on the run's shards; rerun to resume
    dataengine demo --out out/demo                   # the embedded default, end to end
    dataengine eval-captions --recipe demo           # caption fidelity on held-out synthetic-world clips
    dataengine distill --pairs world --out DIR       # train a small captioner from a teacher's captions

Modules: ``main`` (entry point, exit codes), ``app`` (the Typer app), ``render`` (tables on the terminal),
one module per command group (``data``, ``train``, ``models``, ``serve``, ``demo``) and ``demo_flow`` (the
demo's orchestration).
"""

from cli.main import main

__all__ = ["main"]
