"""A saved model loads with `trust_remote_code=True` in a fresh process where `referformer` cannot be imported."""

import os
import subprocess
import sys
import textwrap

import pytest
import torch
from safetensors.torch import save_file

from helpers import randomize_weights, tiny_tokenizer, unit_test_config
from referformer import ReferFormerForReferringVideoObjectSegmentation, ReferFormerProcessor, ReferFormerVideoProcessor


REMOTE_LOAD = textwrap.dedent(
    """
    import sys
    sys.modules["referformer"] = None  # the package is not importable: everything must come from the folder
    import torch
    from safetensors.torch import load_file, save_file
    from transformers import AutoConfig, AutoModel, AutoProcessor

    folder, data = sys.argv[1], sys.argv[2]
    config = AutoConfig.from_pretrained(folder, trust_remote_code=True)
    model = AutoModel.from_pretrained(folder, trust_remote_code=True).eval()
    assert type(config).__module__.startswith("transformers_modules."), type(config).__module__
    assert type(model).__name__ == "ReferFormerForReferringVideoObjectSegmentation", type(model)
    assert type(model).__module__.startswith("transformers_modules."), type(model).__module__
    processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
    assert type(processor).__module__.startswith("transformers_modules."), type(processor).__module__
    frames = load_file(data + "/frames.safetensors")["frames"].numpy()
    inputs = processor(videos=frames, text="the bright square")
    with torch.no_grad():
        outputs = model(**inputs)
    masks = processor.post_process_referring_video_segmentation(outputs, inputs["original_sizes"], inputs["resized_sizes"])
    save_file(
        {"logits": outputs.logits, "pred_masks": outputs.pred_masks, "masks": masks[0]["masks"]},
        data + "/remote_outputs.safetensors",
    )
    print("remote load ok")
    """
)


@pytest.mark.parametrize("backbone", ["timm", "video_swin"])
def test_remote_code_load_without_the_package(tmp_path, backbone):
    overrides = {}
    if backbone == "video_swin":
        overrides["backbone_config"] = {
            "model_type": "referformer_video_swin", "embed_dim": 16, "depths": [1, 1, 1, 1], "num_heads": [1, 1, 2, 2]
        }
    torch.manual_seed(0)
    model = randomize_weights(ReferFormerForReferringVideoObjectSegmentation(unit_test_config(**overrides)).eval())
    folder, data = tmp_path / "model", tmp_path / "data"
    data.mkdir()
    processor = ReferFormerProcessor(ReferFormerVideoProcessor(size={"shortest_edge": 64}), tiny_tokenizer())
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    code_files = ("configuration_referformer.py", "modeling_referformer.py", "ms_deform_attn_pytorch.py", "swin_backbones.py", "processing_referformer.py", "loss_referformer.py")
    for code_file in code_files:
        assert (folder / code_file).exists(), code_file
    frames = torch.randint(0, 256, (2, 48, 60, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    save_file({"frames": frames}, data / "frames.safetensors")
    inputs = processor(videos=frames.numpy(), text="the bright square")
    with torch.no_grad():
        expected = model(**inputs)
    expected_masks = processor.post_process_referring_video_segmentation(
        expected, inputs["original_sizes"], inputs["resized_sizes"]
    )[0]["masks"]

    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_MODULES_CACHE=str(tmp_path / "modules"))
    result = subprocess.run(
        [sys.executable, "-c", REMOTE_LOAD, str(folder), str(data)], capture_output=True, text=True, env=env, cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "remote load ok" in result.stdout
    from safetensors.torch import load_file

    remote = load_file(data / "remote_outputs.safetensors")
    torch.testing.assert_close(remote["logits"], expected.logits, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(remote["pred_masks"], expected.pred_masks, atol=1e-4, rtol=1e-4)
    assert remote["masks"].shape == (2, 48, 60)
    assert (remote["masks"] != expected_masks).float().mean() < 1e-3  # thresholding of equal-within-1e-4 logits
