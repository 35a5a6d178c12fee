"""transformers' own common model and config tests (`ModelTesterMixin`, `ConfigTester`) run against a tiny ReferFormer.

Nothing is vendored: the test files come from the sdist of the installed transformers version, downloaded once with pip
into the pytest cache. The sdist ships the top-level test files only; three modules they import live in sub-packages
that it leaves out, and get stand-ins here: `ExportTesterMixin` (transformers' exporter tests; ReferFormer's export
tests are tests/test_export.py), `GenerationTesterMixin` (ReferFormer does not generate) and `config_common_kwargs`
(read only by a check that composite configs such as ReferFormer's skip). The module is skipped when the sdist cannot
be fetched.
"""

import copy
import math
import importlib
import subprocess
import sys
import tarfile
import unittest
from pathlib import Path

import pytest
import torch
import transformers

from helpers import FP32_ROUNDING, REPO_ROOT, random_inputs, unit_test_config
from referformer import ReferFormerConfig, ReferFormerForReferringVideoObjectSegmentation, ReferFormerModel


CACHE_DIR = REPO_ROOT / ".pytest_cache" / "d" / "transformers-sdist"
PACKAGE_NAME = "transformers_common_tests_" + transformers.__version__.replace(".", "_").replace("+", "_")
STAND_INS = {
    "exporters/test_export.py": "class ExportTesterMixin:\n    pass\n",
    "generation/test_utils.py": "class GenerationTesterMixin:\n    pass\n",
    "utils/test_configuration_utils.py": "config_common_kwargs = {}\n",
}


def import_common_tests():
    """The modules `test_modeling_common` and `test_configuration_common` of the installed transformers version,
    or the reason why they are not available."""
    package_dir = CACHE_DIR / PACKAGE_NAME
    if not (package_dir / "test_modeling_common.py").exists():
        version = transformers.__version__
        CACHE_DIR.mkdir(parents=True, exist_ok=True)
        download = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "--dest"]
        result = subprocess.run(
            download + [str(CACHE_DIR), f"transformers=={version}"], capture_output=True, text=True, timeout=600
        )
        archive = CACHE_DIR / f"transformers-{version}.tar.gz"
        if result.returncode != 0 or not archive.exists():
            return None, f"the transformers {version} sdist could not be fetched with pip: {result.stderr[-300:]}"
        staging = CACHE_DIR / (PACKAGE_NAME + ".partial")
        with tarfile.open(archive) as sdist:
            for member in sdist.getmembers():
                parts = Path(member.name).parts
                if len(parts) == 3 and parts[1] == "tests" and parts[2].endswith(".py"):
                    member.name = parts[2]
                    sdist.extract(member, staging, filter="data")
        if not (staging / "test_modeling_common.py").exists():
            return None, f"the transformers {version} sdist has no tests/test_modeling_common.py"
        for relative_path, source in {"__init__.py": "", **STAND_INS}.items():
            path = staging / relative_path
            path.parent.mkdir(exist_ok=True)
            (path.parent / "__init__.py").touch()
            path.write_text(source)
        staging.rename(package_dir)
    sys.path.insert(0, str(CACHE_DIR))
    try:
        modeling = importlib.import_module(f"{PACKAGE_NAME}.test_modeling_common")
        configuration = importlib.import_module(f"{PACKAGE_NAME}.test_configuration_common")
    except ImportError as error:
        return None, f"transformers' common tests cannot be imported: {error}"
    finally:
        sys.path.remove(str(CACHE_DIR))
    return (modeling, configuration), None


common_tests, reason = import_common_tests()
if common_tests is None:
    pytest.skip(reason, allow_module_level=True)
test_modeling_common, test_configuration_common = common_tests


class ReferFormerModelTester:
    """Tiny config and inputs in the layout the common tests expect."""

    def __init__(self, parent, batch_size=2, num_frames=2, height=32, width=32, text_length=7):
        self.parent = parent
        self.batch_size = batch_size
        self.num_frames = num_frames
        self.height = height
        self.width = width
        self.seq_length = text_length
        self.is_training = True
        config = self.get_config()
        self.hidden_size = config.d_model
        self.num_hidden_layers = config.encoder_layers
        self.num_attention_heads = config.encoder_attention_heads

    def get_config(self):
        # A narrow one-block-per-stage ResNet keeps the model under the common tests' size limit (1M parameters).
        backbone = {
            "model_type": "referformer_timm_backbone",
            "model_name": "resnet18",
            "model_kwargs": {"layers": [1, 1, 1, 1], "channels": [16, 32, 32, 32], "stem_width": 16},
        }
        # A trainable text encoder: the gradient-checkpointing tests check the first checkpointed layer, the text
        # encoder's, which runs without gradients when frozen.
        # The pure-PyTorch deformable attention: the compiled kernel is tested in test_kernels.py, and loading it would
        # add seconds to this file.
        return unit_test_config(
            backbone_config=backbone, decoder_layers=1, freeze_text_encoder=False, disable_custom_kernels=True
        )

    def prepare_config_and_inputs_for_common(self):
        config = self.get_config()
        inputs = random_inputs(
            config, self.batch_size, self.num_frames, self.height, self.width, self.seq_length, seed=0
        )
        return config, inputs


def clip_labels(batch_size, num_frames, height, width):
    """One referred object per clip: a rectangle in every frame with its normalized box."""
    masks = torch.zeros(num_frames, height, width, dtype=torch.bool)
    masks[:, height // 4 : height // 2, width // 4 : 3 * width // 4] = True
    box = torch.tensor([0.5, 0.375, 0.5, 0.25])
    return [
        {
            "masks": masks.clone(),
            "boxes": box.expand(num_frames, 4).clone(),
            "valid": torch.ones(num_frames, dtype=torch.bool),
            "class_labels": torch.zeros(num_frames, dtype=torch.long),
        }
        for _ in range(batch_size)
    ]


class ReferFormerCommonModelTest(test_modeling_common.ModelTesterMixin, unittest.TestCase):
    all_model_classes = (ReferFormerModel, ReferFormerForReferringVideoObjectSegmentation)
    is_encoder_decoder = True
    # The no-copyright-year file would count as "added before 2023", which transformers exempts from this check.
    test_can_init_all_missing_weights_before_2023 = True

    def setUp(self):
        self.model_tester = ReferFormerModelTester(self)
        self.config_tester = test_configuration_common.ConfigTester(
            self, config_class=ReferFormerConfig, has_text_modality=False, common_properties=["d_model"]
        )

    def _prepare_for_class(self, inputs_dict, model_class, return_labels=False):
        inputs_dict = copy.deepcopy(inputs_dict)
        if return_labels and model_class is ReferFormerForReferringVideoObjectSegmentation:
            tester = self.model_tester
            inputs_dict["labels"] = clip_labels(tester.batch_size, tester.num_frames, tester.height, tester.width)
        return inputs_dict

    def test_config(self):
        self.config_tester.run_common_tests()

    def with_loss_classes_only(self, test, *args):
        """Runs a training test on the segmentation head alone: transformers leaves base models out by their entry in
        its own model mapping, which an external model does not have, and `ReferFormerModel` computes no loss."""
        self.all_model_classes = (ReferFormerForReferringVideoObjectSegmentation,)
        try:
            test(*args)
        finally:
            del self.all_model_classes

    def test_training(self):
        self.with_loss_classes_only(super().test_training)

    def check_training_gradient_checkpointing(self, gradient_checkpointing_kwargs=None):
        self.with_loss_classes_only(super().check_training_gradient_checkpointing, gradient_checkpointing_kwargs)

    def test_eager_matches_sdpa(self):
        """`set_attn_implementation` switches the fusion, decoder, FPN and text-encoder attention between eager and SDPA
        with the same results (one padded sentence)."""
        config, inputs = self.model_tester.prepare_config_and_inputs_for_common()
        inputs["attention_mask"][-1, -2:] = 0
        torch.manual_seed(0)
        sdpa = ReferFormerForReferringVideoObjectSegmentation._from_config(config, attn_implementation="sdpa").eval()
        eager = copy.deepcopy(sdpa)
        eager.set_attn_implementation("eager")
        self.assertEqual((sdpa.config._attn_implementation, eager.config._attn_implementation), ("sdpa", "eager"))
        self.assertEqual(eager.model.text_encoder.config._attn_implementation, "eager")
        with torch.no_grad():
            expected, actual = sdpa(**inputs), eager(**inputs)
        for name in ("logits", "pred_boxes", "pred_masks", "last_hidden_state"):
            torch.testing.assert_close(actual[name], expected[name], **FP32_ROUNDING)

    # The gradient-checkpointing tests run the training step three times each (~15 s on a loaded 2-core machine).
    @pytest.mark.slow
    def test_training_gradient_checkpointing(self):
        super().test_training_gradient_checkpointing()

    @pytest.mark.slow
    def test_training_gradient_checkpointing_use_reentrant_false(self):
        super().test_training_gradient_checkpointing_use_reentrant_false()

    @pytest.mark.slow
    def test_training_gradient_checkpointing_use_reentrant_true(self):
        super().test_training_gradient_checkpointing_use_reentrant_true()

    @pytest.mark.slow
    def test_enable_input_require_grads_with_gradient_checkpointing(self):
        super().test_enable_input_require_grads_with_gradient_checkpointing()

    def eager_outputs(self, model_class, **kwargs):
        config, inputs = self.model_tester.prepare_config_and_inputs_for_common()
        for name, value in kwargs.items():
            setattr(config, name, value)
        torch.manual_seed(0)
        model = model_class._from_config(config, attn_implementation="eager").eval()
        with torch.no_grad():
            return model, model(**inputs)

    def test_attention_outputs(self):
        """Encoder, decoder and text-encoder attention weights of every layer, asked by argument or by config; the
        weights of every query sum to 1."""
        tester = self.model_tester
        frames = tester.batch_size * tester.num_frames
        # the flattened levels at strides 8, 16, 32, 64 (each a stride-2 convolution of the previous one)
        sequence = sum(math.ceil(tester.height / stride) * math.ceil(tester.width / stride) for stride in (8, 16, 32, 64))
        for model_class in self.all_model_classes:
            for by_config in (False, True):
                if by_config:
                    model, outputs = self.eager_outputs(model_class, output_attentions=True)
                else:
                    config, inputs = tester.prepare_config_and_inputs_for_common()
                    model = model_class._from_config(config, attn_implementation="eager").eval()
                    with torch.no_grad():
                        outputs = model(**inputs, output_attentions=True)
                config = model.config
                heads, levels = config.encoder_attention_heads, config.num_feature_levels
                expected = {
                    "encoder_attentions": (config.encoder_layers, (frames, sequence, heads, levels, config.encoder_n_points)),
                    "decoder_attentions": (config.decoder_layers, (frames, heads, config.num_queries, config.num_queries)),
                    "cross_attentions": (config.decoder_layers, (frames, config.num_queries, heads, levels, config.decoder_n_points)),
                    "text_encoder_attentions": (
                        config.text_config.num_hidden_layers,
                        (tester.batch_size, config.text_config.num_attention_heads, tester.seq_length, tester.seq_length),
                    ),
                }
                for name, (num_layers, shape) in expected.items():
                    attentions = outputs[name]
                    self.assertEqual(len(attentions), num_layers, name)
                    for weights in attentions:
                        self.assertEqual(tuple(weights.shape), shape, name)
                    # deformable weights `[..., levels, points]` are normalized over levels and points together
                    totals = weights.flatten(-2).sum(-1) if weights.dim() == 5 else weights.sum(-1)
                    torch.testing.assert_close(totals, torch.ones_like(totals))
                self.assertIsNone(outputs.encoder_hidden_states)

    def test_hidden_states_output(self):
        """Backbone, text-encoder, encoder and decoder hidden states, asked by argument or by config; the last ones are
        the outputs the model continues with."""
        tester = self.model_tester
        frames = tester.batch_size * tester.num_frames
        for model_class in self.all_model_classes:
            model, outputs = self.eager_outputs(model_class, output_hidden_states=True)
            config = model.config
            self.assertEqual(len(outputs.encoder_hidden_states), config.encoder_layers + 1)
            self.assertEqual(len(outputs.decoder_hidden_states), config.decoder_layers + 1)
            self.assertEqual(len(outputs.text_encoder_hidden_states), config.text_config.num_hidden_layers + 1)
            strides = (4, 8, 16, 32)
            self.assertEqual(
                [tuple(state.shape) for state in outputs.backbone_hidden_states],
                [
                    (frames, channels, tester.height // stride, tester.width // stride)
                    for channels, stride in zip(model.base_model.backbone.channels, strides)
                ],
            )
            torch.testing.assert_close(
                outputs.encoder_hidden_states[-1], outputs.encoder_last_hidden_state.flatten(0, 1), rtol=0, atol=0
            )
            torch.testing.assert_close(
                outputs.decoder_hidden_states[-1], outputs.last_hidden_state.flatten(0, 1), rtol=0, atol=0
            )
            config, inputs = tester.prepare_config_and_inputs_for_common()
            text = model.base_model.text_encoder(inputs["input_ids"], attention_mask=inputs["attention_mask"])
            torch.testing.assert_close(outputs.text_encoder_hidden_states[-1], text.last_hidden_state)
            self.assertIsNone(outputs.encoder_attentions)
            with torch.no_grad():
                by_argument = model(**inputs, output_hidden_states=True)
            torch.testing.assert_close(by_argument.backbone_hidden_states, outputs.backbone_hidden_states)


def skipped_test(reason):
    def test(self):
        self.skipTest(reason)

    return test


# The generic eager-vs-SDPA comparison feeds text encoder-decoder inputs (`decoder_input_ids`) to any model with
# `is_encoder_decoder`; ReferFormer's comparison is `test_eager_matches_sdpa` above.
for name in dir(test_modeling_common.ModelTesterMixin):
    if name.startswith("test_eager_matches_sdpa_inference"):
        setattr(
            ReferFormerCommonModelTest,
            name,
            skipped_test("builds decoder_input_ids for encoder-decoder text models; see test_eager_matches_sdpa"),
        )

# Two generic tests whose own skip messages would misstate why they do not apply.
ReferFormerCommonModelTest.test_sdpa_can_dispatch_composite_models = skipped_test(
    "needs a vision tower plus a language model; SDPA dispatch: test_sdpa_can_dispatch_non_composite_models"
)
ReferFormerCommonModelTest.test_can_capture_specific_layers_hidden_states = skipped_test(
    "hidden states are per component (encoder_hidden_states, ...), not the single `hidden_states` it selects from"
)
