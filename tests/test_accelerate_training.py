"""The Accelerate training loop: exact resumption from a checkpoint, and 2 processes equal 1 process."""

import os
import subprocess
import sys

import torch
from safetensors.torch import load_file

from helpers import REPO_ROOT, synthetic_training_clips, tiny_training_model
from referformer.training import AccelerateTrainingArguments, train_with_accelerate


SCRIPT = REPO_ROOT / "tests" / "scripts" / "train_tiny.py"


def assert_same_weights(first, second, atol=0.0):
    assert first.keys() == second.keys()
    for key in first:
        torch.testing.assert_close(first[key], second[key], atol=atol, rtol=0, msg=key)


def test_resuming_from_a_checkpoint_continues_exactly(tmp_path):
    clips = synthetic_training_clips(3)  # batch 1: step 4 is in the second epoch

    def run(output_dir, max_steps, resume=None):
        args = AccelerateTrainingArguments(
            output_dir=str(output_dir), max_steps=max_steps, checkpoint_every=2, learning_rate=1e-3, lr_drop_steps=[3], log_every=0
        )
        return train_with_accelerate(tiny_training_model(), clips, args, resume_from_checkpoint=resume).state_dict()

    uninterrupted = run(tmp_path / "full", 4)
    run(tmp_path / "interrupted", 2)  # "killed" after its checkpoint at step 2
    checkpoint = tmp_path / "interrupted" / "checkpoint-2"
    assert (checkpoint / "training_state.json").exists()
    resumed = run(tmp_path / "interrupted", 4, resume=str(checkpoint))
    assert (tmp_path / "interrupted" / "checkpoint-4").exists()
    assert_same_weights(resumed, uninterrupted, atol=1e-7)
    assert not torch.equal(uninterrupted["class_embed.1.weight"], tiny_training_model().state_dict()["class_embed.1.weight"])


def test_two_processes_equal_one_process_over_the_same_global_batch(tmp_path):
    # Two CPU processes talking over gloo, one clip each, against one process with both clips: the gradients of the
    # first step (averaged across the processes, before the optimizer) must be the same.
    env = dict(os.environ, OMP_NUM_THREADS="1", ACCELERATE_USE_CPU="1", CUDA_VISIBLE_DEVICES="")
    single, double = tmp_path / "single", tmp_path / "double"
    single.mkdir(), double.mkdir()
    result = subprocess.run([sys.executable, str(SCRIPT), str(single), "2"], capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    result = subprocess.run(launch + [str(SCRIPT), str(double), "1"], capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    reference = load_file(single / "gradients_rank0.safetensors")
    assert len(reference) == sum(p.requires_grad for p in tiny_training_model().parameters())
    # Each gradient entry is a sum, over the clips' frames and positions, of fp32 products; the runs add the same
    # terms in another order (batched kernels, vs. one clip per process and an all-reduce). The rounding error of a
    # sum of n fp32 terms is at most about n * eps times the sum of the terms' magnitudes, which the norm of the whole
    # gradient bounds (a parameter whose gradient cancels to ~0 still sums large terms). n is the longest reduction:
    # the stem convolution's weight gradient sums 2 clips x 2 frames x 32 x 32 positions of the 64x64 frames.
    longest_reduction = 2 * 2 * 32 * 32
    gradient_norm = torch.linalg.vector_norm(torch.cat([gradient.flatten() for gradient in reference.values()]))
    tolerance = longest_reduction * torch.finfo(torch.float32).eps * gradient_norm.item()
    for rank in (0, 1):
        assert_same_weights(load_file(double / f"gradients_rank{rank}.safetensors"), reference, atol=tolerance)


class EpochRecordingClips(torch.utils.data.Dataset):
    """Clips that remember which epochs they were told about (as `SeededClips` needs, to vary its augmentation)."""

    def __init__(self, clips):
        self.clips, self.epochs_seen = clips, []

    def set_epoch(self, epoch):
        self.epochs_seen.append(epoch)

    def __len__(self):
        return len(self.clips)

    def __getitem__(self, index):
        return self.clips[index]


def test_a_dataset_with_set_epoch_is_told_every_epoch(tmp_path):
    clips = EpochRecordingClips(synthetic_training_clips(2))
    args = AccelerateTrainingArguments(output_dir=str(tmp_path), max_steps=5, learning_rate=1e-3, log_every=0)
    train_with_accelerate(tiny_training_model(), clips, args)  # batch 1: steps 1-2, 3-4 and 5 are epochs 0, 1, 2
    assert list(dict.fromkeys(clips.epochs_seen)) == [0, 1, 2]  # (accelerate forwards it more than once)
