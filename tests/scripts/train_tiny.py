"""Trains a tiny ReferFormer for a few steps with `train_with_accelerate` and saves this process's final weights.

Run directly (one process) or with `accelerate launch --cpu --num_processes 2` by tests/test_accelerate_training.py:
    train_tiny.py OUTPUT_DIR PER_DEVICE_BATCH_SIZE MAX_STEPS
"""

import sys
from pathlib import Path

from accelerate import PartialState
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from helpers import synthetic_training_clips, tiny_training_model  # noqa: E402

from referformer.training import AccelerateTrainingArguments, train_with_accelerate  # noqa: E402


def main():
    output_dir, batch_size, max_steps = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    model = tiny_training_model()
    args = AccelerateTrainingArguments(
        output_dir=output_dir, max_steps=max_steps, per_device_batch_size=batch_size, learning_rate=1e-3,
        backbone_learning_rate=1e-3, log_every=1,
    )
    model = train_with_accelerate(model, synthetic_training_clips(4), args)
    rank = PartialState().process_index
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, f"{output_dir}/weights_rank{rank}.safetensors")


if __name__ == "__main__":
    main()
