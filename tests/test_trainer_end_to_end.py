"""Synthetic Ref-YouTube-VOS data through `datasets` (file paths for training, media features for evaluation), the
transforms, the collator, `ReferFormerTrainer` (training and evaluation with `compute_metrics`)."""

import math

from transformers import TrainingArguments

from helpers import TINY_TEXT_CONFIG, randomize_weights, unit_test_config
from referformer import ReferFormerForReferringVideoObjectSegmentation
from referformer.cli_presets import build_shapes_tokenizer
from referformer.data import ReferringVideoEvalTransform, ReferringVideoTrainTransform, load_ref_youtube_vos
from referformer.data_synthetic import generate_referring_shapes
from referformer.data_transforms import collate_clips
from referformer.training import ReferFormerTrainer, ReferringSegmentationMetrics


def test_trainer_finetunes_and_evaluates_on_a_datasets_dataset(tmp_path):
    generate_referring_shapes(tmp_path, num_videos=2, num_frames=4, height=64, width=96, seed=0, split="train")
    generate_referring_shapes(tmp_path, num_videos=1, num_frames=3, height=64, width=96, seed=1, split="valid")
    tokenizer = build_shapes_tokenizer()
    train = load_ref_youtube_vos(tmp_path, "train").with_transform(
        ReferringVideoTrainTransform(2, scales=(64,), max_size=96, crop_prob=0.0, tokenizer=tokenizer, seed=0)
    )
    # The evaluation rows carry their frames and masks as `datasets` media features, the training rows file paths.
    valid = load_ref_youtube_vos(tmp_path, "valid", embed_media=True).with_transform(
        ReferringVideoEvalTransform(size=64, max_size=96, tokenizer=tokenizer)
    )
    model = randomize_weights(
        ReferFormerForReferringVideoObjectSegmentation(
            unit_test_config(text_config=dict(TINY_TEXT_CONFIG, max_position_embeddings=130))
        )
    )
    args = TrainingArguments(
        output_dir=str(tmp_path / "run"),
        per_device_train_batch_size=2,
        per_device_eval_batch_size=1,
        max_steps=2,
        learning_rate=1e-4,
        weight_decay=5e-4,
        max_grad_norm=0.1,
        remove_unused_columns=False,
        eval_do_concat_batches=False,
        batch_eval_metrics=True,
        use_cpu=True,
        report_to="none",
        save_strategy="no",
    )
    trainer = ReferFormerTrainer(
        model=model,
        args=args,
        train_dataset=train,
        eval_dataset=valid,
        data_collator=collate_clips,
        compute_metrics=ReferringSegmentationMetrics(),
    )
    assert math.isfinite(trainer.train().training_loss)
    metrics = trainer.evaluate()
    assert math.isfinite(metrics["eval_loss"])
    assert 0.0 <= metrics["eval_J"] <= 1.0 and 0.0 <= metrics["eval_F"] <= 1.0
    assert metrics["eval_J&F"] == (metrics["eval_J"] + metrics["eval_F"]) / 2

    trainer.create_model_card()  # what push_to_hub writes: the benchmark's name, the task tag, J&F by its name
    card = (tmp_path / "run" / "README.md").read_text()
    assert "This model was trained from scratch on the ref-youtube-vos dataset." in card, card
    assert "referring-video-object-segmentation" in card and "J&F" in card
    assert "J&f" not in card and "None dataset" not in card
