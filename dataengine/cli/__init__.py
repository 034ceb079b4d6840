"""The ``dataengine`` command line, one module per command group (data, train, serve), each command a thin
wrapper over library functions.

dataengine synth --out data/synth --n 8          # procedural videos + ground-truth JSON
dataengine probe data/synth                      # what ffprobe says, or why a file cannot be used
dataengine clips data/synth --out out/clips      # probe -> split -> decode, with a contact sheet
dataengine run data/synth --out out/run          # inputs -> captions -> latents -> shards, on Ray; resumable
dataengine inspect out/run                       # counts, reasons, distributions, an HTML contact sheet
dataengine demo --out out/demo                   # the embedded default, end to end
dataengine eval-captions --recipe demo           # caption fidelity on held-out synthetic-world clips
dataengine distill --pairs world --out DIR       # train a small captioner from a teacher's captions
dataengine probe-student DIR                     # inside a distilled captioner: what it knows, what it sees
"""

from dataengine.cli.main import app, main

__all__ = ["app", "main"]
