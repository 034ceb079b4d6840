"""The tiny VLM builder: built once per session, loaded by transformers here and by vLLM in a subprocess.

The vLLM test runs the engine in a child process (vLLM needs a ``__main__`` guard and binds threads) and
checks three things: it captions a video, guided JSON decoding obeys a bounded schema, and its greedy
float32 token ids equal transformers' for the same prompt and frames.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pydantic import ValidationError

from dataengine.caption.tiny_vlm import Family, TinyVLMConfig, build_tiny_vlm, ensure_tiny_vlm

FAMILIES: tuple[Family, ...] = ("qwen2_5_vl", "qwen3_vl")
MODELS = {  # what the loading tests run: each family, and a Qwen3-VL with 8-px patches (distill's option)
    "qwen2_5_vl": TinyVLMConfig(family="qwen2_5_vl"),
    "qwen3_vl": TinyVLMConfig(family="qwen3_vl"),
    "qwen3_vl-patch8": TinyVLMConfig(family="qwen3_vl", vision_patch_size=8),
}
SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
           "<|video_pad|>"]  # fmt: skip
FPS = 2.0
SCHEMA = {
    "type": "object",
    "properties": {
        "summary": {"type": "string", "maxLength": 40},
        "count": {"type": "integer", "minimum": 0, "maximum": 9},
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 8}, "maxItems": 2},
    },
    "required": ["summary", "count", "tags"],
    "additionalProperties": False,
}

VLLM_SCRIPT = """
import json, sys, time
import numpy as np

def main():
    from vllm import LLM, SamplingParams
    from vllm.sampling_params import StructuredOutputsParams
    folder, frames_npy, request_json = sys.argv[1:4]
    request = json.loads(open(request_json).read())
    t0 = time.perf_counter()
    llm = LLM(model=folder, dtype="float32", max_model_len=2048, enforce_eager=True, seed=0,
              limit_mm_per_prompt={"video": 1, "image": 0},
              structured_outputs_config={"backend": "guidance", "disable_any_whitespace": True})
    t1 = time.perf_counter()
    item = {"prompt": request["prompt"],
            "multi_modal_data": {"video": (np.load(frames_npy), request["metadata"])}}
    greedy = llm.generate([item], SamplingParams(temperature=0.0, max_tokens=16))[0].outputs[0]
    t2 = time.perf_counter()
    guided = SamplingParams(temperature=0.0, max_tokens=200,
                            structured_outputs=StructuredOutputsParams(json=request["schema"]))
    structured = llm.generate([item], guided)[0].outputs[0]
    print("RESULT " + json.dumps({"ids": list(greedy.token_ids), "text": greedy.text,
                                  "json": structured.text, "start_s": t1 - t0, "generate_s": t2 - t1}))

if __name__ == "__main__":
    main()
"""


@pytest.fixture(scope="session")
def tiny_vlms(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny_vlm")
    return {name: ensure_tiny_vlm(root, config) for name, config in MODELS.items()}


@pytest.fixture(scope="session", name="frames_THWC")
def _random_frames() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, size=(8, 112, 112, 3), dtype=np.uint8)


def metadata(frames_THWC: np.ndarray) -> dict[str, Any]:
    """What the frames are: every frame of a FPS clip (transformers' ``VideoMetadata`` fields)."""
    n = len(frames_THWC)
    return {"fps": FPS, "duration": n / FPS, "total_num_frames": n, "frames_indices": list(range(n)),
            "video_backend": "opencv"}  # fmt: skip


def messages(frames_THWC: np.ndarray | None) -> list[dict[str, Any]]:
    video = {"type": "video"} if frames_THWC is None else {"type": "video", "video": frames_THWC}
    return [{"role": "user", "content": [video, {"type": "text", "text": "Describe this video as JSON."}]}]


def hf_generate(folder: Path, frames_THWC: np.ndarray, max_new_tokens: int) -> tuple[list[int], str, int]:
    """Greedy transformers generation: new token ids, their text and the number of video tokens."""
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    model = AutoModelForImageTextToText.from_pretrained(folder).eval()
    processor = AutoProcessor.from_pretrained(folder)
    meta = metadata(frames_THWC)
    inputs = processor.apply_chat_template(
        messages(frames_THWC), add_generation_prompt=True, tokenize=True, return_dict=True,
        return_tensors="pt", processor_kwargs={"video_metadata": [meta], "do_sample_frames": False},
    )  # fmt: skip
    with torch.inference_mode():
        out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
    new = out[0, inputs["input_ids"].shape[1] :].tolist()
    n_video = int((inputs["input_ids"] == model.config.video_token_id).sum())
    return new, processor.decode(new, skip_special_tokens=True), n_video


def test_config_is_strict() -> None:
    with pytest.raises(ValidationError):
        TinyVLMConfig(hidden_sise=64)  # type: ignore[call-arg]
    with pytest.raises(ValidationError, match="hidden_size / num_heads"):
        TinyVLMConfig(hidden_size=48, num_heads=2)  # head_dim 24: no vLLM CPU kernel
    with pytest.raises(ValidationError):
        TinyVLMConfig(family="llava")
    with pytest.raises(ValidationError, match="multiple of 2"):
        TinyVLMConfig(vision_patch_size=7)
    assert TinyVLMConfig().patch_size == 14 and TinyVLMConfig(family="qwen3_vl").patch_size == 16


@pytest.mark.parametrize("family", FAMILIES)
def test_tokenizer_ids_follow_the_bpe_and_match_the_configs(tiny_vlms: dict[str, Path], family: str) -> None:
    from transformers import AutoConfig, AutoTokenizer, GenerationConfig

    folder = tiny_vlms[family]
    tokenizer = AutoTokenizer.from_pretrained(folder)
    config = AutoConfig.from_pretrained(folder)
    vocab = tokenizer.get_vocab()
    ids = [vocab[token] for token in SPECIAL]
    assert ids[:3] == [1024, 1025, 1026]  # right after the 1024 trained ids, in the released order
    assert len(set(ids)) == len(ids) and max(vocab.values()) == len(tokenizer) - 1
    assert config.text_config.vocab_size == len(tokenizer)
    assert (tokenizer.eos_token, tokenizer.pad_token) == ("<|im_end|>", "<|endoftext|>")
    assert (config.vision_start_token_id, config.vision_end_token_id, config.video_token_id) == tuple(ids[3:])
    assert GenerationConfig.from_pretrained(folder).eos_token_id == [ids[2], ids[0]]
    text = '{"summary":"A red circle moves right.","count":3,"tags":["shape"]}<|im_end|>'
    encoded = tokenizer.encode(text, add_special_tokens=False)
    assert encoded[-1] == ids[2] and len(encoded) < len(text) / 2  # the BPE learned words, not just bytes
    assert tokenizer.decode(encoded) == text


def test_build_is_deterministic_and_refuses_to_overwrite(tmp_path: Path, tiny_vlms: dict[str, Path]) -> None:
    again = build_tiny_vlm(tmp_path / "again")
    for path in tiny_vlms["qwen2_5_vl"].iterdir():
        assert (again / path.name).read_bytes() == path.read_bytes(), path.name
    other_seed = build_tiny_vlm(tmp_path / "seed1", TinyVLMConfig(seed=1))
    assert (other_seed / "model.safetensors").read_bytes() != (again / "model.safetensors").read_bytes()
    with pytest.raises(FileExistsError):
        build_tiny_vlm(again)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["again", "seed1"]  # no temporary folder left


def test_ensure_builds_once_for_concurrent_callers(tmp_path: Path) -> None:
    code = "import sys; from dataengine.caption.tiny_vlm import ensure_tiny_vlm as e; print(e(sys.argv[1]))"
    procs = [
        subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=300)[0].strip() for p in procs]
    assert [p.returncode for p in procs] == [0, 0]
    assert outs[0] == outs[1] == str(ensure_tiny_vlm(tmp_path))
    assert [p.name for p in tmp_path.iterdir()] == [Path(outs[0]).name]  # the loser's build is gone
    assert Path(outs[0], "model.safetensors").is_file()


@pytest.mark.parametrize("model", MODELS)
def test_transformers_captions_a_video(
    tiny_vlms: dict[str, Path], frames_THWC: np.ndarray, model: str
) -> None:
    config = json.loads((tiny_vlms[model] / "config.json").read_text())["vision_config"]
    assert config["patch_size"] == MODELS[model].patch_size
    ids, text, n_video = hf_generate(tiny_vlms[model], frames_THWC, max_new_tokens=8)
    assert 1 <= len(ids) <= 8 and isinstance(text, str)
    # 8 frames of 112 x 112: 4 temporal groups of 4 x 4 merged patches; of 7 x 7 with 8-px patches
    assert n_video == (4 * 7 * 7 if MODELS[model].patch_size == 8 else 64)


def test_a_tower_merging_4_x_4_patches_gives_the_text_model_the_tokens_of_a_coarser_grid(
    tmp_path: Path, frames_THWC: np.ndarray
) -> None:
    """``vision_merge_size=4`` with 8-px patches: model and processor merge 4 x 4 patches into one token,
    so the text model reads as many tokens as with 16-px patches merged by 2 (``bench/tower_shape.py
    --merge-size 4``)."""
    folder = ensure_tiny_vlm(
        tmp_path, TinyVLMConfig(family="qwen3_vl", vision_patch_size=8, vision_merge_size=4)
    )
    vision = json.loads((folder / "config.json").read_text())["vision_config"]
    assert (vision["patch_size"], vision["spatial_merge_size"]) == (8, 4)
    assert json.loads((folder / "video_preprocessor_config.json").read_text())["merge_size"] == 4
    ids, _, n_video = hf_generate(folder, frames_THWC, max_new_tokens=2)
    assert (
        1 <= len(ids) <= 2 and n_video == 4 * 4 * 4
    )  # 112 x 112 -> 128 x 128: 16 x 16 patches, 4 x 4 tokens


@pytest.mark.slow
@pytest.mark.parametrize("model", MODELS)
def test_vllm_captions_guides_json_and_matches_transformers(
    tiny_vlms: dict[str, Path], frames_THWC: np.ndarray, model: str, tmp_path: Path
) -> None:
    if importlib.util.find_spec("vllm") is None:
        pytest.skip("vLLM is not installed")
    from transformers import AutoProcessor

    folder = tiny_vlms[model]
    prompt = AutoProcessor.from_pretrained(folder).apply_chat_template(
        messages(None), add_generation_prompt=True, tokenize=False
    )
    np.save(tmp_path / "frames.npy", frames_THWC)
    vllm_metadata = metadata(frames_THWC) | {"do_sample_frames": False}  # the frames are already sampled
    request = {"prompt": prompt, "metadata": vllm_metadata, "schema": SCHEMA}
    (tmp_path / "request.json").write_text(json.dumps(request))
    (tmp_path / "run_vllm.py").write_text(VLLM_SCRIPT)
    env = os.environ | {
        "HF_HUB_OFFLINE": "1",
        "VLLM_CPU_KVCACHE_SPACE": "1",  # GiB
        "VLLM_ENABLE_V1_MULTIPROCESSING": "0",  # engine in this child: one process start instead of three
        "VLLM_CPU_OMP_THREADS_BIND": "nobind",  # binding the whole child to one core slows it ~10x
    }
    argv = [sys.executable, str(tmp_path / "run_vllm.py"), str(folder), str(tmp_path / "frames.npy")]
    run = subprocess.run([*argv, str(tmp_path / "request.json")], env=env, capture_output=True, text=True,
                         timeout=500)  # fmt: skip
    lines = [line for line in run.stdout.splitlines() if line.startswith("RESULT ")]
    assert run.returncode == 0 and lines, run.stderr[-4000:]
    result = json.loads(lines[-1].removeprefix("RESULT "))

    assert result["ids"] and isinstance(result["text"], str)
    structured = json.loads(result["json"])
    assert set(structured) == {"summary", "count", "tags"} and 0 <= structured["count"] <= 9
    assert len(structured["summary"]) <= 40 and len(structured["tags"]) <= 2
    assert all(isinstance(t, str) and len(t) <= 8 for t in structured["tags"])

    hf_ids, _, _ = hf_generate(folder, frames_THWC, max_new_tokens=16)
    assert result["ids"] == hf_ids  # float32 greedy: same frames, same prompt, same tokens
