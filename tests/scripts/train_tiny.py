"""Runs the first optimizer step of `train_with_accelerate` on a tiny ReferFormer and saves the gradients that step
applies (after the backward pass and the averaging across processes, before the optimizer).

Run directly (one process) or with `accelerate launch --cpu --num_processes 2` by tests/test_accelerate_training.py:
    train_tiny.py OUTPUT_DIR PER_DEVICE_BATCH_SIZE
"""

import sys
from pathlib import Path

from accelerate import PartialState
from safetensors.torch import save_file
from torch.optim.optimizer import register_optimizer_step_pre_hook

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from helpers import synthetic_training_clips, tiny_training_model  # noqa: E402

from referformer.training import AccelerateTrainingArguments, train_with_accelerate  # noqa: E402


def main():
    output_dir, batch_size = sys.argv[1], int(sys.argv[2])
    model = tiny_training_model()
    names = {id(parameter): name for name, parameter in model.named_parameters()}
    gradients = {}

    def record_gradients(optimizer, args, kwargs):
        for group in optimizer.param_groups:
            for parameter in group["params"]:
                if parameter.grad is not None:
                    gradients[names[id(parameter)]] = parameter.grad.detach().clone()

    # No clipping: the recorded gradients are the averaged ones themselves.
    args = AccelerateTrainingArguments(
        output_dir=output_dir, max_steps=1, per_device_batch_size=batch_size, max_grad_norm=0.0, log_every=0
    )
    handle = register_optimizer_step_pre_hook(record_gradients)
    train_with_accelerate(model, synthetic_training_clips(4), args)
    handle.remove()
    rank = PartialState().process_index
    save_file(gradients, f"{output_dir}/gradients_rank{rank}.safetensors")


if __name__ == "__main__":
    main()
