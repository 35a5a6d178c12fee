"""A saved model loads with `trust_remote_code=True` in a fresh process where `referformer` cannot be imported."""

import os
import subprocess
import sys
import textwrap

import pytest
import torch
from safetensors.torch import save_file

from helpers import random_inputs, randomize_weights, tiny_config
from referformer import ReferFormerForReferringVideoObjectSegmentation


REMOTE_LOAD = textwrap.dedent(
    """
    import sys
    sys.modules["referformer"] = None  # the package is not importable: everything must come from the folder
    import torch
    from safetensors.torch import load_file, save_file
    from transformers import AutoConfig, AutoModel

    folder, data = sys.argv[1], sys.argv[2]
    config = AutoConfig.from_pretrained(folder, trust_remote_code=True)
    model = AutoModel.from_pretrained(folder, trust_remote_code=True).eval()
    assert type(config).__module__.startswith("transformers_modules."), type(config).__module__
    assert type(model).__name__ == "ReferFormerForReferringVideoObjectSegmentation", type(model)
    assert type(model).__module__.startswith("transformers_modules."), type(model).__module__
    inputs = load_file(data + "/inputs.safetensors")
    with torch.no_grad():
        outputs = model(**inputs)
    save_file({"logits": outputs.logits, "pred_masks": outputs.pred_masks}, data + "/remote_outputs.safetensors")
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
    model = randomize_weights(ReferFormerForReferringVideoObjectSegmentation(tiny_config(**overrides)).eval())
    folder, data = tmp_path / "model", tmp_path / "data"
    data.mkdir()
    model.save_pretrained(folder)
    for code_file in ("configuration_referformer.py", "modeling_referformer.py", "ms_deform_attn_pytorch.py", "swin_backbones.py"):
        assert (folder / code_file).exists(), code_file
    inputs = random_inputs(model.config, num_frames=2, height=64, width=64)
    save_file(inputs, data / "inputs.safetensors")
    with torch.no_grad():
        expected = model(**inputs)

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
