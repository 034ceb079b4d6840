"""The caption loss and the world's auxiliary (grounding and dense) losses."""

from __future__ import annotations

from typing import Any

from dataengine.world.language import SIZES
from trainer.distill.config import WORLD_TARGETS, DistillConfig
from trainer.distill.targets import DENSE_CLASSES, DENSE_READINGS


def digit_weights(tokenizer: Any, digit_weight: float) -> Any:
    """Per vocabulary id: ``digit_weight`` for tokens that decode to digits only, 1 for the rest."""
    import torch

    weights = torch.ones(len(tokenizer))
    for token_id in range(len(tokenizer)):
        if tokenizer.decode([token_id]).strip().isdigit():
            weights[token_id] = digit_weight
    return weights


def weighted_loss(model: Any, batch: dict[str, Any], weights: Any, outputs: Any = None) -> Any:
    """Next-token cross-entropy over the labelled tokens, each weighted by its target's weight (of
    ``outputs``, the model's on ``batch``, when given)."""
    import torch

    if outputs is None:
        outputs = model(**{k: v for k, v in batch.items() if k not in ("labels", *WORLD_TARGETS)})
    logits = outputs.logits[:, :-1].float()
    targets = batch["labels"][:, 1:]
    labelled = targets != -100
    losses = torch.nn.functional.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=-100, reduction="none"
    ).view_as(targets)
    w = weights[targets.clamp(min=0)] * labelled
    return (losses * w).sum() / w.sum().clamp(min=1e-6)


def world_loss(
    model: Any, batch: dict[str, Any], weights: Any, config: DistillConfig, dense_head: Any = None
) -> tuple[Any, Any, dict[str, float]]:
    """The caption loss plus the world's auxiliary losses that ``config`` weights, and, for the log, the
    caption loss alone and what the auxiliaries measure.

    Grounding: ``grounding_weight`` x the mean over grounded queries of -log(the attention probability that
    head 0 of text layer ``grounding_layer`` puts on the described object's visual tokens in the first
    frame pair, and head 1 on those of the last pair); logged as that probability's mean, ``attention``.
    Dense: ``dense_weight`` x the mean of ``dense_head``'s cross-entropies (one per reading) on the visual
    tokens as they enter the text model (``dense_targets``); logged as each reading's accuracy
    (``DENSE_LOGGED``).
    """
    import torch

    grounding = config.grounding_weight > 0
    inputs = {k: v for k, v in batch.items() if k not in ("labels", *WORLD_TARGETS)}
    outputs = model(**inputs, output_attentions=grounding, output_hidden_states=dense_head is not None)
    caption = weighted_loss(model, batch, weights, outputs)
    loss, measured = caption, {}
    video = model.config.video_token_id
    visual = [(batch["input_ids"][row] == video).nonzero()[:, 0] for row in range(len(batch["input_ids"]))]
    if grounding and (mass := _attention_mass(outputs, batch, visual, config)) is not None:
        loss = loss + config.grounding_weight * -torch.log(mass + 1e-6).mean()
        measured["attention"] = float(mass.detach().mean())
    if dense_head is not None and batch.get("dense"):
        rows = [row for row, targets in enumerate(batch["dense"]) if targets is not None]
        tokens = torch.cat([outputs.hidden_states[0][row, visual[row]] for row in rows])
        dense, read = dense_loss(dense_head, tokens, torch.cat([batch["dense"][row] for row in rows]))
        measured |= read
        if dense is not None:
            loss = loss + config.dense_weight * dense
    return loss, caption.detach(), measured


def dense_loss(dense_head: Any, tokens: Any, targets: Any) -> tuple[Any, dict[str, float]]:
    """The mean of ``dense_head``'s cross-entropies on ``tokens`` (N, hidden) against ``dense_targets``'s
    (N, 10) class ids (None when no reading applies), and each reading's accuracy (``DENSE_LOGGED``)."""
    import torch

    losses, measured = [], {}
    for k, logits in enumerate(dense_head(tokens).split(DENSE_CLASSES, dim=-1)):
        read = targets[:, k] != -100
        if read.any():
            losses.append(torch.nn.functional.cross_entropy(logits[read], targets[read, k]))
            guess = logits[read].argmax(-1)
            measured[DENSE_READINGS[k]] = float((guess == targets[read, k]).float().mean())
        if DENSE_READINGS[k] == "centre" and read.any():  # shape x size: the shape right, any size word
            measured["shape"] = float((guess // len(SIZES) == targets[read, k] // len(SIZES)).float().mean())
    return (torch.stack(losses).mean() if losses else None), measured


def _attention_mass(outputs: Any, batch: dict[str, Any], visual: list[Any], config: DistillConfig) -> Any:
    """Per grounded query and head, the attention probability on the described object's tokens (None
    when the batch has no grounded query)."""
    import torch

    attention = outputs.attentions[config.grounding_layer]  # (batch, head, query, key)
    heads = min(attention.shape[1], 2 if config.grounding_motion else 1)
    masses = []
    for row, grounding in enumerate(batch.get("grounding") or []):
        if grounding is None:
            continue
        queries, targets = grounding
        n = targets.shape[-1]  # tokens per frame pair
        for head, keys in enumerate((visual[row][:n], visual[row][-n:])[:heads]):
            masses.append((attention[row, head][queries][:, keys] * targets[:, head]).sum(-1))
    return torch.cat(masses) if masses else None
