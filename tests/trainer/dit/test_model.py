"""The DiT: shapes for images and videos, adaLN-Zero at init, text masks and guidance dropout, RoPE,
activation checkpointing, preset sizes and the FLOPs estimate. All on CPU with the tiny preset."""

from __future__ import annotations

import pytest
import torch
from pydantic import ValidationError
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from trainer.dit import model as dit_module
from trainer.dit.model import DiT, DiTBlock, build_dit, flops_per_sample

C, E = 4, 32  # latent channels, text dim


def _tiny(**overrides: object) -> DiT:
    torch.manual_seed(0)
    return build_dit("tiny", C, E, **overrides)


def _perturb(model: DiT) -> DiT:
    """Nudge every weight so the zero-initialised branches are live, as after some training."""
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(0.1 * torch.randn(param.shape, generator=generator))
    return model


def _inputs(shape: tuple[int, ...], text_tokens: int = 1) -> tuple[torch.Tensor, ...]:
    generator = torch.Generator().manual_seed(2)
    batch = shape[0]
    latents_BCTHW = torch.randn(shape, generator=generator)
    t_B = torch.rand(batch, generator=generator)
    text_BLE = torch.randn(batch, text_tokens, E, generator=generator)
    return latents_BCTHW, t_B, text_BLE, torch.ones(batch, text_tokens, dtype=torch.bool)


def test_one_model_takes_images_and_videos_of_any_size() -> None:
    model = _perturb(_tiny())
    for shape in [(2, C, 1, 8, 12), (2, C, 3, 6, 4), (1, C, 2, 10, 10)]:
        out = model(*_inputs(shape))
        assert out.shape == shape
        assert torch.isfinite(out).all()


def test_output_is_exactly_zero_at_init_and_training_wakes_the_branches() -> None:
    model = _tiny()
    latents_BCTHW, t_B, text_BLE, mask_BL = _inputs((2, C, 3, 4, 4), text_tokens=3)
    out = model(latents_BCTHW, t_B, text_BLE, mask_BL)
    assert torch.equal(out, torch.zeros_like(out))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    (out - latents_BCTHW).square().mean().backward()
    assert model.final.linear.weight.grad is not None and model.final.linear.weight.grad.abs().sum() > 0
    optimizer.step()
    optimizer.zero_grad()
    (model(latents_BCTHW, t_B, text_BLE, mask_BL) - latents_BCTHW).square().mean().backward()
    block = model.blocks[0]
    assert isinstance(block, DiTBlock)
    for live in (model.final.ada.weight, block.ada.weight, block.cross.proj.weight):
        assert live.grad is not None and live.grad.abs().sum() > 0


def test_gradients_reach_every_parameter_once_perturbed() -> None:
    model = _perturb(_tiny())
    latents_BCTHW, t_B, text_BLE, mask_BL = _inputs((2, C, 2, 4, 4), text_tokens=3)
    mask_BL[1, 2] = False
    out = model(latents_BCTHW, t_B, text_BLE, mask_BL, drop_text_B=torch.tensor([True, False]))
    out.square().mean().backward()
    dead = [name for name, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert dead == []


def test_padding_tokens_do_not_change_the_output() -> None:
    model = _perturb(_tiny())
    latents_BCTHW, t_B, text_BLE, mask_BL = _inputs((2, C, 1, 4, 6), text_tokens=5)
    mask_BL[0, 3:] = False
    mask_BL[1, 2:] = False
    out = model(latents_BCTHW, t_B, text_BLE, mask_BL)
    garbage_BLE = text_BLE.clone()
    garbage_BLE[~mask_BL] = torch.tensor(float("nan"))
    assert torch.equal(model(latents_BCTHW, t_B, garbage_BLE, mask_BL), out)
    trimmed = model(latents_BCTHW[:1], t_B[:1], text_BLE[:1, :3], mask_BL[:1, :3])
    torch.testing.assert_close(trimmed, out[:1], atol=1e-5, rtol=1e-5)
    pooled = model(latents_BCTHW, t_B, text_BLE[:, :1], mask_BL[:, :1])
    assert pooled.shape == latents_BCTHW.shape and not torch.allclose(pooled, out)


def test_dropped_rows_and_empty_rows_see_the_null_text() -> None:
    model = _perturb(_tiny())
    latents_BCTHW, t_B, text_BLE, mask_BL = _inputs((2, C, 2, 4, 4), text_tokens=4)
    plain = model(latents_BCTHW, t_B, text_BLE, mask_BL)
    dropped = model(latents_BCTHW, t_B, text_BLE, mask_BL, drop_text_B=torch.tensor([True, False]))
    null_BLE, null_mask_BL = model.null_text.detach()[None], torch.ones(1, 1, dtype=torch.bool)
    null_out = model(latents_BCTHW[:1], t_B[:1], null_BLE, null_mask_BL)
    torch.testing.assert_close(dropped[:1], null_out, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(dropped[1:], plain[1:])
    assert not torch.allclose(dropped[:1], plain[:1])
    mask_BL[0] = False
    empty = model(latents_BCTHW, t_B, text_BLE, mask_BL)
    assert torch.isfinite(empty).all()
    torch.testing.assert_close(empty[:1], null_out, atol=1e-5, rtol=1e-5)


def _flip_equivariance_gap(model: DiT) -> float:
    latents_BCTHW, t_B, text_BLE, mask_BL = _inputs((1, C, 2, 4, 4), text_tokens=2)
    out = model(latents_BCTHW, t_B, text_BLE, mask_BL).detach()
    flipped = model(latents_BCTHW.flip(2, 3, 4), t_B, text_BLE, mask_BL).detach().flip(2, 3, 4)
    return float((flipped - out).abs().max() / out.abs().max())


def test_rope_makes_token_order_matter(monkeypatch: pytest.MonkeyPatch) -> None:
    model = _perturb(_tiny(patch=(1, 1, 1)))  # one latent pixel per token: a flip permutes tokens
    assert _flip_equivariance_gap(model) > 1e-2

    def no_rotation(grid: tuple[int, int, int], head_dim: int, device: torch.device) -> torch.Tensor:
        return torch.zeros(grid[0] * grid[1] * grid[2], head_dim // 2, device=device)

    monkeypatch.setattr(dit_module, "rope_angles", no_rotation)
    assert _flip_equivariance_gap(model) < 1e-5  # control: without RoPE nothing knows where a token is


def _loss_and_grads(model: DiT) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    latents_BCTHW, t_B, text_BLE, mask_BL = _inputs((2, C, 3, 4, 4), text_tokens=3)
    loss = (model(latents_BCTHW, t_B, text_BLE, mask_BL) - latents_BCTHW).square().mean()
    loss.backward()
    return loss.detach(), {name: p.grad for name, p in model.named_parameters() if p.grad is not None}


def test_grad_checkpointing_gives_the_same_loss_and_grads(monkeypatch: pytest.MonkeyPatch) -> None:
    plain = _perturb(_tiny())
    checkpointed = _tiny(grad_checkpointing=True)
    checkpointed.load_state_dict(plain.state_dict())
    loss, grads = _loss_and_grads(plain)
    calls: list[int] = []
    block_forward = DiTBlock.forward

    def counted(self: DiTBlock, *args: torch.Tensor) -> torch.Tensor:
        calls.append(1)
        return block_forward(self, *args)

    monkeypatch.setattr(DiTBlock, "forward", counted)
    loss_ckpt, grads_ckpt = _loss_and_grads(checkpointed)
    assert len(calls) == 2 * len(checkpointed.blocks)  # each block ran again in the backward
    torch.testing.assert_close(loss_ckpt, loss, atol=1e-5, rtol=0)
    assert grads_ckpt.keys() == grads.keys()
    for name, grad in grads.items():
        torch.testing.assert_close(grads_ckpt[name], grad, atol=1e-5, rtol=0, msg=name)


# DiT-*/2's sizes (33M, 130M, 458M, 675M) plus ~4 D^2 of cross-attention per block and the text projections.
@pytest.mark.parametrize(
    ("preset", "low", "high"),
    [
        ("tiny", 0.2e6, 0.5e6),
        ("S", 35e6, 45e6),
        ("B", 150e6, 170e6),
        ("L", 530e6, 590e6),
        ("XL", 780e6, 870e6),
    ],
)
def test_preset_parameter_counts(preset: str, low: float, high: float) -> None:
    with torch.device("meta"):
        model = build_dit(preset, in_channels=4, text_dim=768)
    print(f"DiT-{preset}: {model.num_params() / 1e6:.1f}M parameters")
    assert low <= model.num_params() <= high


def test_without_text_conditioning_b_is_dit_b2_sized() -> None:
    with torch.device("meta"):
        model = build_dit("B", in_channels=4, text_dim=768)
    text_parts: list[torch.nn.Module] = [model.text_pool_proj, model.text_token_proj]
    for block in model.blocks:
        assert isinstance(block, DiTBlock)
        text_parts += [block.cross, block.norm2]
    text_params = sum(p.numel() for part in text_parts for p in part.parameters()) + model.null_text.numel()
    assert 126e6 <= model.num_params() - text_params <= 134e6  # DiT-B/2: 130M


def test_bad_shapes_raise_clear_errors() -> None:
    model = _tiny()
    latents_BCTHW, t_B, text_BLE, mask_BL = _inputs((1, C, 1, 7, 8))
    with pytest.raises(ValueError, match="divisible by the patch"):
        model(latents_BCTHW, t_B, text_BLE, mask_BL)
    latents_BCTHW, t_B, text_BLE, mask_BL = _inputs((1, C, 1, 8, 8))
    with pytest.raises(ValueError, match="latents_BCTHW"):
        model(latents_BCTHW[:, :2], t_B, text_BLE, mask_BL)
    with pytest.raises(ValueError, match="text_BLE"):
        model(latents_BCTHW, t_B, text_BLE[..., :5], mask_BL)
    with pytest.raises(ValueError, match="text_mask_BL"):
        model(latents_BCTHW, t_B, text_BLE, mask_BL.float())


def test_unknown_preset_and_bad_config_raise() -> None:
    with pytest.raises(ValueError, match="tiny, mini, S, B, L, XL"):
        build_dit("XXL", C, E)
    with pytest.raises(ValidationError, match="hiden"):
        build_dit("tiny", C, E, hiden=32)
    with pytest.raises(ValidationError, match="divisible by heads"):
        build_dit("tiny", C, E, heads=5)


def test_flops_estimate_matches_torch_flop_counter() -> None:
    model = _perturb(_tiny())
    latents_BCTHW, t_B, text_BLE, mask_BL = _inputs((2, C, 2, 8, 8), text_tokens=4)
    latents_BCTHW.requires_grad_(True)  # count the input gradients the estimate assumes
    text_BLE.requires_grad_(True)
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        model(latents_BCTHW, t_B, text_BLE, mask_BL).square().mean().backward()
    estimate = 2 * flops_per_sample(model.config, tokens=2 * 4 * 4, text_tokens=4)
    print(f"estimate {estimate:.3e}, counted {counter.get_total_flops():.3e}")
    assert estimate == pytest.approx(counter.get_total_flops(), rel=0.05)
