"""The lineages of the models this project trained and ships: each stage's settings, runnable.

    dataengine rebuild world-captioner --out /tmp/world-captioner            # five stages, ~505 min, 2 cores
    dataengine rebuild world-captioner --out /tmp/wc --dry-run               # each stage's settings
    dataengine rebuild world-captioner --out /tmp/smoke --max-steps 2 \\
        --set world_clips=4 --set batch_size=2 --set workers=1               # the chain in a minute or two

A ``Lineage`` is the recipe of one shipped model folder (``dataengine/assets/<model>``): its ``Stage``s in
order, each a trainer (``distill`` or ``vae``) and the ``key=value`` settings it was trained with, exactly as
``--set`` (and ``--minutes``, ``--seed``, ``--pairs``) spelled them on the command line. A stage after the
first goes on from the one before it: ``rebuild`` adds ``init=<out>/<previous stage>``. Configs are built
the way the CLI builds them, through ``apply_overrides`` on the trainer's defaults, so a lineage keeps
working while the trainers' insides change; a changed default is caught by the tests, which compare the
last stage with the config the shipped folder records.

``rebuild`` trains the stages into ``<out>/<stage>/`` and skips a stage whose folder is complete (the
trainers write a folder in one rename, record and all), so rerunning after a crash goes on; a complete
folder trained with other settings is refused, never mixed in. ``minutes_scale`` and ``max_steps`` are for
smoke runs: they are logged, and each stage's record keeps the config it really ran with.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import model_validator

import dataengine
from dataengine.config import Config, ConfigError, Registry, apply_overrides
from trainer.distill import DistillConfig, distill
from trainer.vae import VAETrainConfig, train_vae

Trainer = Literal["distill", "vae"]
TrainConfig = DistillConfig | VAETrainConfig
Log = Callable[[str], None]
RECORDS: dict[Trainer, str] = {
    "distill": "distill.json",
    "vae": "training.json",
}  # written last, in one rename
ASSETS = Path(dataengine.__file__).resolve().parent / "assets"


class Stage(Config):
    """One training run of a lineage.

    Args:
        name: its folder under the rebuild's ``--out`` (and the name the lab notes give it).
        trainer: ``distill`` (``trainer.distill``) or ``vae`` (``trainer.vae``).
        settings: ``key=value`` overrides of the trainer's defaults, as ``--set`` takes them; never
            ``init``, which ``rebuild`` chains.
        note: what a rebuild of this stage cannot reproduce, if anything.
    """

    name: str
    trainer: Trainer
    settings: tuple[str, ...] = ()
    note: str = ""

    @model_validator(mode="after")
    def _no_init(self) -> Stage:
        if any(setting.partition("=")[0].strip() == "init" for setting in self.settings):
            raise ValueError(f"stage {self.name}: init is the previous stage's folder; rebuild sets it")
        return self


class Lineage(Config):
    """The stages that make one shipped model folder, and how to install and score the result.

    Args:
        name: the registry name (``dataengine rebuild NAME``).
        model: the folder it rebuilds, ``dataengine/assets/<model>``.
        stages: in training order; each after the first goes on from the one before (so it is a distill).
        eval_command: what to run after installing the folder, if its scores are shipped beside it.
    """

    name: str
    model: str
    stages: tuple[Stage, ...]
    eval_command: str | None = None

    @model_validator(mode="after")
    def _chainable(self) -> Lineage:
        names = [stage.name for stage in self.stages]
        if not names or len(set(names)) != len(names):
            raise ValueError(f"lineage {self.name}: stages need distinct names, got {names}")
        if any(stage.trainer != "distill" for stage in self.stages[1:]):
            raise ValueError(f"lineage {self.name}: only distill stages go on from a previous stage (init)")
        return self

    @property
    def assets_dir(self) -> Path:
        return ASSETS / self.model

    def install_commands(self, final: Path | str) -> list[str]:
        """Shell commands, run from the repository root, that put ``final`` in place of the shipped folder."""
        target = f"dataengine/assets/{self.model}"
        return [
            f"rm -rf {target} && cp -r {final} {target}",
            *([self.eval_command] if self.eval_command else []),
        ]


# --- the shipped lineages ---------------------------------------------------------------------------------


def world_captioner() -> Lineage:
    """The shipped 8-px captioner (docs/lab-notes/2026-12-06-captioner.md): one long run from random
    weights, then four on from it; 415 training minutes, ~505 with each stage's pairs and tower warm-up."""
    stages = (
        Stage(name="p8c", trainer="distill", settings=(
            "pairs=world", "minutes=95", "seed=41", "threads=2", "workers=2", "world_clips=6000",
            "freeze_positions=true", "grounding_weight=0.1", "dense_weight=0.25", "digit_weight=0.2",
            "patch_size=8", "tower_warmup_steps=1000", "log_every=50",
        ), note="first trained at commit bce3a87, before the dense head read rows and columns and heading, "
        "extent and centre place; today's code trains those readings too, so its student differs"),
        Stage(name="p8e", trainer="distill", settings=(
            "pairs=world", "minutes=85", "seed=42", "threads=2", "workers=2", "world_clips=5000",
            "freeze_positions=true", "grounding_weight=0.1", "dense_weight=0.25", "digit_weight=0.2",
            "lr=1e-3", "warmup_steps=50", "tower_warmup_steps=400", "log_every=50",
        ), note="first trained at commit 5f3f599, before the heading, extent and centre-place readings; "
        "today's code trains them too, so its student differs"),
        Stage(name="p8f", trainer="distill", settings=(
            "pairs=world", "minutes=75", "seed=43", "threads=2", "workers=2", "world_clips=5000",
            "freeze_positions=true", "grounding_weight=0.1", "dense_weight=0.25", "digit_weight=0.2",
            "lr=6e-4", "warmup_steps=50", "tower_warmup_steps=300", "log_every=50",
        )),
        Stage(name="p8g", trainer="distill", settings=(
            "pairs=world", "minutes=80", "seed=44", "threads=2", "workers=2", "world_clips=10000",
            "freeze_positions=true", "grounding_weight=0.1", "dense_weight=0.25", "digit_weight=0.2",
            "lr=6e-4", "warmup_steps=50", "tower_warmup_steps=300", "log_every=50",
        )),
        Stage(name="p8h", trainer="distill", settings=(
            "pairs=world", "minutes=80", "seed=45", "threads=2", "workers=2", "world_clips=10000",
            "freeze_positions=true", "grounding_weight=0.1", "dense_weight=0.25", "digit_weight=0.2",
            "lr=6e-4", "warmup_steps=50", "tower_warmup_steps=300", "log_every=50",
        )),
    )  # fmt: skip
    return Lineage(
        name="world-captioner",
        model="world-captioner",
        stages=stages,
        eval_command="dataengine eval-captions --recipe demo --n 32 --json "
        "> dataengine/assets/world-captioner/fidelity.json",
    )


def world_vae() -> Lineage:
    """The shipped world VAE: ``dataengine train-vae`` with the defaults (40 min on one thread; the data,
    the sample footage among it, take ~2 min more)."""
    return Lineage(name="world-vae", model="world-vae", stages=(Stage(name="world-vae", trainer="vae"),))


LINEAGES: Registry[Lineage] = Registry(
    "lineage", {"world-captioner": world_captioner, "world-vae": world_vae}
)


# --- resolving and running --------------------------------------------------------------------------------


def plan(
    lineage: Lineage,
    out_dir: Path = Path("OUT"),
    *,
    minutes_scale: float = 1.0,
    max_steps: int | None = None,
    extra: Sequence[str] = (),
) -> list[tuple[str, TrainConfig]]:
    """Each stage's complete config, in order, without training.

    Args:
        lineage: what to resolve.
        out_dir: where the stages' folders go (each stage's ``init`` is the previous one's folder there).
        minutes_scale: smoke runs: every stage's time budget times this.
        max_steps: smoke runs: at most this many optimizer steps a stage, a distill's tower warm-up too.
        extra: ``key=value`` overrides applied to every stage last (tests, ``device=cuda``, ...).

    Raises:
        ConfigError: a setting the trainer does not have or does not accept, or a scale that is not > 0.
    """
    if not minutes_scale > 0:
        raise ConfigError(f"minutes_scale must be > 0, got {minutes_scale}")
    configs: list[tuple[str, TrainConfig]] = []
    for index, stage in enumerate(lineage.stages):
        chained = [f"init={out_dir / lineage.stages[index - 1].name}"] if index else []
        config = apply_overrides(_defaults(stage.trainer), [*stage.settings, *chained])
        config = apply_overrides(config, [*_smoke(config, minutes_scale, max_steps), *extra])
        configs.append((stage.name, config))
    return configs


def rebuild(
    lineage: Lineage,
    out_dir: Path,
    *,
    minutes_scale: float = 1.0,
    max_steps: int | None = None,
    extra: Sequence[str] = (),
    log: Log = print,
) -> Path:
    """Train the lineage's stages in order into ``out_dir/<stage>/``; complete stages are skipped.

    Args:
        lineage: what to rebuild.
        out_dir: one folder per stage goes here; rerun with the same arguments to go on after a crash.
        minutes_scale, max_steps, extra: as in ``plan``; anything but the defaults is logged as such.
        log: where progress lines go (the trainers print their own).

    Returns:
        The last stage's folder: the model to install (``Lineage.install_commands``).

    Raises:
        ConfigError: as ``plan``; or a complete stage folder whose record holds other settings than the
            ones planned (another rebuild's: choose another ``out_dir`` or remove it).
    """
    stages = plan(lineage, out_dir, minutes_scale=minutes_scale, max_steps=max_steps, extra=extra)
    if minutes_scale != 1.0 or max_steps is not None:
        log(
            f"smoke rebuild of {lineage.name}: minutes x{minutes_scale:g}, at most "
            f"{max_steps or 'unlimited'} steps a stage; {out_dir} is not the shipped model"
        )
    if extra:
        log(f"every stage also sets: {' '.join(extra)}")
    for index, ((name, config), stage) in enumerate(zip(stages, lineage.stages, strict=True), start=1):
        folder = out_dir / name
        head = f"stage {index}/{len(stages)} {name} ({stage.trainer}, {_minutes(config)})"
        if _completed(folder, stage.trainer, config):
            log(f"{head}: {folder} is complete, skipped")
            continue
        log(f"{head}: training into {folder}")
        _train(config, folder, log)
    final = out_dir / lineage.stages[-1].name
    log(f"{lineage.name} rebuilt: {final}")
    return final


def changed_settings(config: Config) -> list[str]:
    """``config`` as ``key=value`` overrides of its type's defaults (required fields always; nested sections
    by dotted key): what a stage really sets, for ``--dry-run``."""
    values = config.model_dump(mode="json")
    required = {key: values[key] for key, field in type(config).model_fields.items() if field.is_required()}
    defaults = type(config).model_validate(required).model_dump(mode="json")
    return [f"{key}={_text(value)}" for key, value in _diff(values, defaults, required, "")]


def full_minutes(lineage: Lineage) -> float:
    """The lineage's training budget at full scale: the sum of its stages' minutes (data preparation and a
    distill's tower warm-up come on top)."""
    return sum(config.minutes or 0.0 for _, config in plan(lineage))


def _defaults(trainer: Trainer) -> TrainConfig:
    # DistillConfig requires pairs; every captioner stage names its own, 'world' is only the placeholder
    return DistillConfig(pairs="world") if trainer == "distill" else VAETrainConfig()


def _smoke(config: TrainConfig, minutes_scale: float, max_steps: int | None) -> list[str]:
    overrides = []
    if minutes_scale != 1.0 and config.minutes is not None:
        overrides.append(f"minutes={config.minutes * minutes_scale:.6g}")
    if max_steps is not None:
        overrides.append(f"max_steps={max_steps}")
        if isinstance(config, DistillConfig) and config.tower_warmup_steps > max_steps:
            overrides.append(f"tower_warmup_steps={max_steps}")
    return overrides


def _completed(folder: Path, trainer: Trainer, config: TrainConfig) -> bool:
    """Whether ``folder`` holds this stage already; a complete folder trained otherwise is an error.

    ``init`` is left out of the comparison: it is where the previous stage lay, which moves with the
    folders, while the previous stage itself was checked the same way."""
    record = folder / RECORDS[trainer]
    if not record.is_file():
        return False
    recorded = json.loads(record.read_text())["config"]
    planned = config.model_dump(mode="json")
    differ = sorted(
        k for k in planned.keys() | recorded.keys() if k != "init" and planned.get(k) != recorded.get(k)
    )
    if differ:
        shown = ", ".join(f"{k}: {recorded.get(k)!r} there, {planned.get(k)!r} planned" for k in differ)
        raise ConfigError(
            f"{folder} is a complete stage trained with other settings ({shown}): choose another output "
            "folder or remove it"
        )
    return True


def _train(config: TrainConfig, folder: Path, log: Log) -> None:
    if isinstance(config, DistillConfig):
        result = distill(config, folder)
        log(f"{folder}: {result.steps} steps on {result.pairs} pairs in {result.seconds / 60:.1f} min")
    else:
        vae = train_vae(config, folder, log)
        log(f"{folder}: {vae.steps} steps in {vae.seconds / 60:.1f} min")


def _minutes(config: TrainConfig) -> str:
    budget = "no time limit" if config.minutes is None else f"{config.minutes:g} min"
    return budget if config.max_steps is None else f"{budget}, at most {config.max_steps} steps"


def _diff(
    values: dict[str, Any], defaults: dict[str, Any], keep: dict[str, Any], prefix: str
) -> list[tuple[str, Any]]:
    changed: list[tuple[str, Any]] = []
    for key, value in values.items():
        default = defaults.get(key)
        if isinstance(value, dict) and isinstance(default, dict):
            changed += _diff(value, default, {}, f"{prefix}{key}.")
        elif key in keep or value != default:
            changed.append((f"{prefix}{key}", value))
    return changed


def _text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))
