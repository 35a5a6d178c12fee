"""A tiny ReferFormer learns: it overfits one synthetic clip of a moving square."""

import torch

from helpers import unit_test_config
from referformer import ReferFormerForReferringVideoObjectSegmentation, ReferFormerVideoProcessor
from referformer.training import get_parameter_groups


def moving_square_clip(num_frames=3, size=64):
    """A yellow 32x32 square moving right on a dark blue background, its masks and normalized boxes."""
    frames = torch.zeros(num_frames, size, size, 3, dtype=torch.uint8)
    frames[..., 2] = 60
    masks = torch.zeros(num_frames, size, size, dtype=torch.bool)
    boxes = []
    for frame in range(num_frames):
        left = 4 + 8 * frame
        masks[frame, 16:48, left : left + 32] = True
        frames[frame][masks[frame]] = torch.tensor([240, 200, 30], dtype=torch.uint8)
        boxes.append([(left + 16) / size, 32 / size, 32 / size, 32 / size])
    return frames, masks, torch.tensor(boxes)


def test_tiny_model_overfits_one_clip():
    torch.manual_seed(0)
    frames, masks, boxes = moving_square_clip()
    video_processor = ReferFormerVideoProcessor(do_resize=False)
    inputs = video_processor(frames.numpy())
    input_ids = torch.tensor([[0, 10, 11, 12, 2]])  # "<s> the yellow square </s>" in a tiny vocabulary
    labels = [{"masks": masks, "boxes": boxes, "valid": torch.ones(3, dtype=torch.long)}]
    config = unit_test_config(dropout=0.0, text_projection_dropout=0.0, pixel_decoder_dropout=0.0)
    model = ReferFormerForReferringVideoObjectSegmentation(config).train()
    optimizer = torch.optim.AdamW(get_parameter_groups(model, 2e-3, 2e-3, 2e-3, 1.0, 0.0))
    losses = []
    for _ in range(120):
        loss = model(**inputs, input_ids=input_ids, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        losses.append(loss.item())
    assert losses[0] / min(losses[-10:]) >= 5, losses[::10]

    model.eval()
    with torch.no_grad():
        outputs = model(**inputs, input_ids=input_ids)
    result = video_processor.post_process_referring_video_segmentation(outputs, inputs["original_sizes"])[0]
    iou = (result["masks"] & masks).sum() / (result["masks"] | masks).sum()
    assert iou > 0.8, iou
