"""Loaders of the five ReferFormer data layouts and the training / evaluation transforms.

Every test builds a miniature copy of the official layout in `tmp_path` (real JPEG/PNG files, palette masks, h5,
.mat and COCO json), with each object painted in a colour of its own so that alignment of pixels and labels can be
checked after augmentation.
"""

import io
import json
import os
import shutil

import av
import numpy as np
import pytest
import torch
from PIL import Image
from scipy.io import savemat
from scipy.ndimage import binary_dilation, binary_erosion

from referformer import data_transforms
from referformer.processing_referformer import ReferFormerVideoProcessor, get_resize_output_size
from datasets import Image as ImageFeature
from datasets import List, load_from_disk

from referformer.data import (
    DATASET_FEATURES,
    IMAGENET_MEAN,
    IMAGENET_STD,
    MEDIA_DATASET_FEATURES,
    ReferringVideoEvalTransform,
    ReferringVideoTrainTransform,
    centered_window_indices,
    clean_expression,
    count_video_frames,
    expand_clip_starts,
    iter_row_frames,
    load_a2d_sentences,
    load_jhmdb_sentences,
    load_object_masks,
    load_ref_davis17,
    load_ref_youtube_vos,
    load_refcoco,
    load_video_frames,
    photometric_distort,
    sample_train_frame_indices,
    swap_left_right,
)


HEIGHT, WIDTH = 120, 160
BACKGROUND = (100, 100, 100)
MAGENTA, CYAN, ORANGE = (230, 20, 200), (20, 210, 220), (250, 140, 10)
DAVIS_PALETTE = [0, 0, 0, 128, 0, 0, 0, 128, 0] + [0] * (768 - 9)


# ---------------------------------------------------------------------------------------------------
# Scene helpers
# ---------------------------------------------------------------------------------------------------


def rect_mask(top, left, height, width, size=(HEIGHT, WIDTH)):
    mask = np.zeros(size, dtype=bool)
    mask[max(top, 0) : max(top + height, 0), max(left, 0) : max(left + width, 0)] = True
    return mask


def paint(masks_and_colors, size=(HEIGHT, WIDTH)):
    image = np.empty((*size, 3), dtype=np.uint8)
    image[:] = BACKGROUND
    for mask, color in masks_and_colors:
        image[mask] = color
    return image


def save_jpeg(array, path):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, quality=95, subsampling=0)


def save_palette_png(labels, path):
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(labels.astype(np.uint8))
    image.putpalette(DAVIS_PALETTE)
    image.save(path)


def write_json(data, path):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))


def denormalize(pixel_values):
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return ((pixel_values * std + mean) * 255).permute(0, 2, 3, 1).numpy()


def assert_mask_on_color(pixels, mask, color, margin=8, tolerance=40):
    """Pixels well inside the mask have the object's colour; pixels well outside do not."""
    mask = np.asarray(mask, dtype=bool)
    inner = binary_erosion(mask, iterations=margin)
    if inner.any():
        distance = np.abs(pixels[inner] - np.array(color)).max(-1)
        assert np.mean(distance < tolerance) > 0.99, f"object colour under the mask: {pixels[inner].mean(0)}"
    outer = ~binary_dilation(mask, iterations=margin)
    distance = np.abs(pixels[outer] - np.array(color)).max(-1)
    assert np.mean(distance < tolerance) < 0.001, "object colour found outside the mask"
    return bool(inner.any())


def assert_sample_consistent(sample, num_frames, num_label_frames=None):
    num_label_frames = num_frames if num_label_frames is None else num_label_frames
    pixel_values, labels = sample["pixel_values"], sample["labels"]
    height, width = pixel_values.shape[-2:]
    assert pixel_values.shape == (num_frames, 3, height, width) and pixel_values.dtype == torch.float32
    assert labels["masks"].shape == (num_label_frames, height, width) and labels["masks"].dtype == torch.bool
    assert labels["boxes"].shape == (num_label_frames, 4) and labels["boxes"].dtype == torch.float32
    assert labels["valid"].shape == labels["class_labels"].shape == (num_label_frames,)
    assert labels["valid"].dtype == labels["class_labels"].dtype == torch.long
    assert labels["resized_size"].tolist() == sample["resized_size"].tolist() == [height, width]
    assert labels["original_size"].tolist() == sample["original_size"].tolist()
    assert sample["frame_indices"].shape == (num_frames,)
    # Invalid frames have zero boxes; valid boxes are normalized cxcywh that agree with the mask.
    boxes, valid, masks = labels["boxes"].numpy(), labels["valid"].numpy().astype(bool), labels["masks"].numpy()
    assert np.all(boxes[~valid] == 0)
    assert np.all(boxes[valid][:, 2:] > 0) and np.all((boxes >= 0) & (boxes <= 1))
    for t in np.flatnonzero(valid):
        if masks[t].sum() < 50:
            continue
        ys, xs = np.nonzero(masks[t])
        expected = [
            (xs.min() + xs.max()) / 2 / width,
            (ys.min() + ys.max()) / 2 / height,
            (xs.max() - xs.min()) / width,
            (ys.max() - ys.min()) / height,
        ]
        np.testing.assert_allclose(boxes[t], expected, atol=8 / min(height, width))


def assert_samples_equal(first, second):
    """Two transformed samples hold the same values (exactly: one process, the same operations on the same inputs)."""
    assert first.keys() == second.keys()
    for key in ("pixel_values", "frame_indices", "original_size", "resized_size"):
        assert torch.equal(first[key], second[key]), key
    for key in ("expression", "video_id", "exp_id", "image_id", "valid_frame_index"):
        assert first[key] == second[key], key
    if "labels" in first:
        assert first["labels"].keys() == second["labels"].keys()
        for key, value in first["labels"].items():
            assert torch.equal(value, second["labels"][key]), key


def row_media(row):
    """Every frame (`[T, H, W, 3]`) and the referred object's masks of a row, decoded by the row readers."""
    num_frames = count_video_frames(row)
    frames = np.stack([np.asarray(image) for image in load_video_frames(row, range(num_frames))])
    masks = load_object_masks(row, range(num_frames)) if row["mask_type"] != "none" else None
    return frames, masks


def assert_same_media(path_rows, media_rows):
    """The rows of a path-form and an `embed_media` dataset decode to the same frames and masks."""
    assert len(path_rows) == len(media_rows)
    for path_row, media_row in zip(path_rows, media_rows, strict=True):
        (frames, masks), (media_frames, media_masks) = row_media(path_row), row_media(media_row)
        np.testing.assert_array_equal(media_frames, frames)
        np.testing.assert_array_equal(np.stack(list(iter_row_frames(media_row))), frames)
        if masks is not None:
            np.testing.assert_array_equal(media_masks, masks)
            assert masks.any()


def save_elsewhere_and_delete(dataset, tmp_path, *sources):
    """`dataset` saved with `save_to_disk`, the saved folder moved to another folder, `sources` deleted: what
    `load_from_disk` then reads can only come from the saved bytes."""
    dataset.save_to_disk(str(tmp_path / "saved"))
    shutil.copytree(tmp_path / "saved", tmp_path / "elsewhere" / "copy")
    for folder in (tmp_path / "saved", *sources):
        shutil.rmtree(folder)
    return load_from_disk(str(tmp_path / "elsewhere" / "copy"))


# ---------------------------------------------------------------------------------------------------
# Ref-YouTube-VOS
# ---------------------------------------------------------------------------------------------------

YTVOS_FRAMES = ["00000", "00005", "00010", "00015", "00020", "00025"]


def ytvos_object_masks(t):
    """Object 1 (magenta) moves right in every frame; object 2 (cyan) is visible in frames 0-2 only."""
    magenta = rect_mask(30, 10 + 8 * t, 50, 45)
    cyan = rect_mask(70, 110, 35, 40) if t < 3 else np.zeros((HEIGHT, WIDTH), dtype=bool)
    return magenta, cyan


def write_ytvos_video(split_dir, video, frame_names, with_masks):
    for t, name in enumerate(frame_names):
        magenta, cyan = ytvos_object_masks(t)
        save_jpeg(paint([(magenta, MAGENTA), (cyan, CYAN)]), split_dir / "JPEGImages" / video / f"{name}.jpg")
        if with_masks:
            save_palette_png(magenta * 1 + cyan * 2, split_dir / "Annotations" / video / f"{name}.png")


@pytest.fixture
def ytvos_root(tmp_path):
    root = tmp_path / "ref-youtube-vos"
    for video in ("vid_a", "vid_b"):
        write_ytvos_video(root / "train", video, YTVOS_FRAMES, with_masks=True)
    write_json(
        {
            "videos": {
                "vid_a": {
                    "objects": {
                        "1": {"category": "person", "frames": YTVOS_FRAMES},
                        "2": {"category": "dog", "frames": YTVOS_FRAMES[:3]},
                    }
                },
                "vid_b": {"objects": {"1": {"category": "cat", "frames": YTVOS_FRAMES}}},
            }
        },
        root / "train" / "meta.json",
    )
    write_json(
        {
            "videos": {
                # Frame names deliberately unsorted: the loader sorts them as the original does.
                "vid_a": {
                    "expressions": {
                        "0": {"exp": "A  Person on the LEFT", "obj_id": "1"},
                        "1": {"exp": "a dog", "obj_id": "2"},
                    },
                    "frames": YTVOS_FRAMES[::-1],
                },
                "vid_b": {"expressions": {"0": {"exp": "a cat", "obj_id": "1"}}, "frames": YTVOS_FRAMES},
            }
        },
        root / "meta_expressions" / "train" / "meta_expressions.json",
    )
    # Competition valid file: lists a valid video and a test video; expressions carry only "exp".
    for video in ("val_a", "test_a"):
        write_ytvos_video(root / "valid", video, YTVOS_FRAMES[:3], with_masks=False)
    write_json(
        {
            "videos": {
                "val_a": {"expressions": {"0": {"exp": "the person"}}, "frames": YTVOS_FRAMES[:3]},
                "test_a": {"expressions": {"0": {"exp": "the dog"}}, "frames": YTVOS_FRAMES[:3]},
            }
        },
        root / "meta_expressions" / "valid" / "meta_expressions.json",
    )
    write_json(
        {"videos": {"test_a": {"expressions": {"0": {"exp": "the dog"}}, "frames": YTVOS_FRAMES[:3]}}},
        root / "meta_expressions" / "test" / "meta_expressions.json",
    )
    return root


def test_ref_youtube_vos_train_rows(ytvos_root):
    dataset = load_ref_youtube_vos(ytvos_root, "train")
    assert dataset.features == DATASET_FEATURES
    assert len(dataset) == 3
    rows = {(row["video_id"], row["exp_id"]): row for row in dataset}
    row = rows["vid_a", "0"]
    assert row["dataset"] == "ref-youtube-vos"
    assert (row["obj_id"], row["category"], row["expression"]) == ("1", "person", "A  Person on the LEFT")
    assert row["frame_names"] == YTVOS_FRAMES
    assert row["frames"] == [str(ytvos_root / "train" / "JPEGImages" / "vid_a" / f"{n}.jpg") for n in YTVOS_FRAMES]
    assert row["masks"] == [str(ytvos_root / "train" / "Annotations" / "vid_a" / f"{n}.png") for n in YTVOS_FRAMES]
    assert (row["mask_type"], row["annotated_frame"], row["start_frame"]) == ("palette", -1, -1)
    assert rows["vid_a", "1"]["obj_id"] == "2" and rows["vid_a", "1"]["category"] == "dog"

    masks = load_object_masks(rows["vid_a", "1"], [0, 2, 3])
    expected = np.stack([ytvos_object_masks(t)[1] for t in (0, 2, 3)])
    np.testing.assert_array_equal(masks, expected)
    frames = load_video_frames(row, [1])
    assert frames[0].size == (WIDTH, HEIGHT)
    assert count_video_frames(row) == len(YTVOS_FRAMES)


def test_media_form_is_saved_with_its_bytes_and_reads_as_the_path_form(ytvos_root, tmp_path):
    paths = load_ref_youtube_vos(ytvos_root, "train")
    media = load_ref_youtube_vos(ytvos_root, "train", embed_media=True)
    assert media.features == MEDIA_DATASET_FEATURES
    assert media.column_names == paths.column_names
    assert media[0]["video"] is None and media[0]["mask_type"] == "palette"
    expected = [row_media(row) for row in paths]
    eval_samples = [ReferringVideoEvalTransform(size=96)(row) for row in paths]
    train = ReferringVideoTrainTransform(3, seed=5)
    train_samples = [train(row) for row in paths]

    loaded = save_elsewhere_and_delete(media, tmp_path, ytvos_root)
    assert loaded.features == MEDIA_DATASET_FEATURES
    row = loaded[0]
    # The saved values are the files' bytes, named by their file name only.
    assert [frame["path"] for frame in row["frames"]] == [f"{name}.jpg" for name in YTVOS_FRAMES]
    assert [mask["path"] for mask in row["masks"]] == [f"{name}.png" for name in YTVOS_FRAMES]
    assert all(frame["bytes"][:2] == b"\xff\xd8" for frame in row["frames"])  # JPEG files, kept as they were
    for row, (frames, masks) in zip(loaded, expected, strict=True):
        np.testing.assert_array_equal(row_media(row)[0], frames)
        np.testing.assert_array_equal(row_media(row)[1], masks)
    for row, sample in zip(loaded, eval_samples, strict=True):
        assert_samples_equal(ReferringVideoEvalTransform(size=96)(row), sample)
    # The same seed draws the same clips from either form (reading a row draws nothing).
    train = ReferringVideoTrainTransform(3, seed=5)
    for row, sample in zip(loaded, train_samples, strict=True):
        assert_samples_equal(train(row), sample)
    # Streamed rows, and frames and masks decoded to PIL images by `datasets`, read the same.
    for row, sample in zip(loaded.to_iterable_dataset(), eval_samples, strict=True):
        assert_samples_equal(ReferringVideoEvalTransform(size=96)(row), sample)
    decoded = loaded.cast_column("frames", List(ImageFeature())).cast_column("masks", List(ImageFeature()))
    assert isinstance(decoded[0]["frames"][0], Image.Image) and decoded[0]["masks"][0].mode == "P"
    assert_samples_equal(ReferringVideoEvalTransform(size=96)(decoded[1]), eval_samples[1])


def test_transform_takes_one_row_or_a_batch(ytvos_root):
    """`transform(row)`, `dataset.map(transform)`, `dataset.map(transform, batched=True)` and `with_transform` give the
    same samples: each fresh transform seeded alike draws the rows' clips in the same order from the same stream."""
    dataset = load_ref_youtube_vos(ytvos_root, "train")

    def transform():
        return ReferringVideoTrainTransform(3, seed=7, scales=(96,), max_size=160)

    one_by_one = transform()
    expected = [one_by_one(row) for row in dataset]
    other_seed = ReferringVideoTrainTransform(3, seed=8, scales=(96,), max_size=160)(dataset[0])
    assert not torch.equal(other_seed["pixel_values"], expected[0]["pixel_values"])  # the seed matters
    batch = dataset.with_transform(transform())[0:3]
    for index, sample in enumerate(expected):
        assert_samples_equal({key: values[index] for key, values in batch.items()}, sample)
    for options in ({}, {"batched": True, "batch_size": 2}):
        mapped = dataset.map(transform(), remove_columns=dataset.column_names, **options).with_format("torch")
        for index, sample in enumerate(expected):
            assert_samples_equal(mapped[index], sample)
    # Anything else is refused with one line.
    for value, error in (
        (["a row"], "got list"),
        ({"video_id": 3}, "got `video_id` 3"),
        ({"video_id": ["vid_a", "vid_b"], "exp_id": "0"}, "every column as a list of one length"),
        ({"video_id": ["vid_a"], "exp_id": ["0", "1"]}, "every column as a list of one length"),
    ):
        with pytest.raises((TypeError, ValueError), match=error) as raised:
            transform()(value)
        assert "\n" not in str(raised.value)


def test_row_media_values_are_checked(ytvos_root):
    row = load_ref_youtube_vos(ytvos_root, "train")[0]
    with pytest.raises(TypeError, match=r"A row's frame must be a file path, a PIL image or a `datasets.Image` value"):
        load_video_frames({**row, "frames": [{"bytes": None, "path": None}]}, [0])
    with pytest.raises(ValueError, match="Cannot read frame image broken.jpg"):
        load_video_frames({**row, "frames": [{"bytes": b"not a jpeg", "path": "broken.jpg"}]}, [0])
    with pytest.raises(TypeError, match=r"cast a decoded column with `datasets.Video\(decode=False\)`"):
        count_video_frames({**row, "frames": [], "video": object()})
    with pytest.raises(ValueError, match="Cannot decode video file clip.mp4"):
        count_video_frames({**row, "frames": [], "video": {"bytes": b"not a video", "path": "clip.mp4"}})
    binary = {**row, "mask_type": "binary"}  # palette PNGs are not binary masks
    with pytest.raises(ValueError, match=r"00000.png is a mode 'P' image, not a binary \(mode '1'\) mask"):
        load_object_masks(binary, [0])


def test_ytvos_masks_must_be_palette_ids_and_name_the_object(ytvos_root):
    rows = {(row["video_id"], row["exp_id"]): row for row in load_ref_youtube_vos(ytvos_root, "train")}
    # Object 2 is visible in frames 0-2 only: frames without it are fine while it occurs elsewhere in the video.
    assert not load_object_masks(rows["vid_a", "1"], [4, 5]).any()
    # An obj_id that occurs in no mask of the video is refused, naming the video, the expression and the id.
    absent = {**rows["vid_a", "1"], "obj_id": "3"}
    with pytest.raises(ValueError) as raised:
        load_object_masks(absent, [0, 1])
    assert str(raised.value) == (
        "Video 'vid_a', expression '1': object id 3 occurs in none of the video's 6 annotated frames (object ids "
        "found: 1, 2)."
    )
    # The same masks saved as 0/255 grayscale PNGs (mode L): refused, not read as empty masks of object 1.
    for t, name in enumerate(YTVOS_FRAMES):
        Image.fromarray(ytvos_object_masks(t)[0].astype(np.uint8) * 255).save(
            ytvos_root / "train" / "Annotations" / "vid_b" / f"{name}.png"
        )
    with pytest.raises(ValueError, match=r"vid_b/00000.png is a mode 'L' image, not a palette \(mode 'P'\) PNG of "
                                         r"object ids: save the masks as palette PNGs"):
        load_object_masks(rows["vid_b", "0"], [0])
    with pytest.raises(ValueError, match="mode 'L'"):
        ReferringVideoTrainTransform(2, seed=0).transform_example(rows["vid_b", "0"])


def test_ref_youtube_vos_valid_drops_test_videos(ytvos_root):
    dataset = load_ref_youtube_vos(ytvos_root, "valid")
    assert dataset["video_id"] == ["val_a"]
    row = dataset[0]
    assert (row["obj_id"], row["mask_type"], row["masks"]) == ("", "none", [])
    sample = dataset.with_transform(ReferringVideoEvalTransform())[0]
    assert "labels" not in sample
    assert sample["pixel_values"].shape == (3, 3, 360, 480)
    assert sample["expression"] == "the person"


def test_eval_transform_and_video_processor_give_the_same_pixels(ytvos_root):
    """Training/evaluation transforms normalize with the video processor's rule: the same frames give the same
    pixel values, and `collate_clips` pads them as the processor pads a batch."""
    row = load_ref_youtube_vos(ytvos_root, "valid")[0]
    sample = ReferringVideoEvalTransform(size=360, max_size=640).transform_example(row)
    processor = ReferFormerVideoProcessor(size={"shortest_edge": 360, "longest_edge": 640}, size_divisor=32)
    inputs = processor(os.path.dirname(row["frames"][0]))
    assert torch.equal(inputs["pixel_values"][0, :, :, :360, :480], sample["pixel_values"])
    sample["input_ids"] = torch.tensor([0, 2])
    batch = data_transforms.collate_clips([sample])
    assert torch.equal(batch["pixel_values"], inputs["pixel_values"])
    assert torch.equal(batch["pixel_mask"], inputs["pixel_mask"])


def test_loader_errors_name_the_path(ytvos_root, tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError, match=str(missing)):
        load_ref_youtube_vos(missing, "train")
    with pytest.raises(ValueError, match="Unknown Ref-YouTube-VOS split 'val'"):
        load_ref_youtube_vos(ytvos_root, "val")
    expressions = ytvos_root / "meta_expressions" / "test" / "meta_expressions.json"
    expressions.unlink()
    with pytest.raises(FileNotFoundError, match=str(expressions)):
        load_ref_youtube_vos(ytvos_root, "test")
    (ytvos_root / "train" / "meta.json").write_text("{not json")
    with pytest.raises(ValueError, match="meta.json"):
        load_ref_youtube_vos(ytvos_root, "train")
    with pytest.raises(FileNotFoundError, match="a2d_sentences_single_frame_train_annotations.json"):
        load_a2d_sentences(ytvos_root, "train")
    with pytest.raises(ValueError, match="Unknown A2D-Sentences split 'val'"):
        load_a2d_sentences(ytvos_root, "val")
    with pytest.raises(FileNotFoundError, match="jhmdb_sentences_samples_metadata.json"):
        load_jhmdb_sentences(ytvos_root)
    with pytest.raises(ValueError, match="Unknown refcoco\\+ split 'test'"):
        load_refcoco(ytvos_root, "refcoco+", "test")
    with pytest.raises(ValueError, match="Unknown referring expression dataset 'refclef'"):
        load_refcoco(ytvos_root, "refclef", "train")


def test_train_transform_keeps_pixels_on_masks(ytvos_root):
    dataset = load_ref_youtube_vos(ytvos_root, "train")
    row = next(row for row in dataset if row["video_id"] == "vid_a" and row["exp_id"] == "0")
    checked = 0
    for seed in range(6):
        for crop_prob in (0.0, 1.0):
            transform = ReferringVideoTrainTransform(5, crop_prob=crop_prob, photometric=False, seed=seed)
            sample = transform.transform_example(row)
            assert_sample_consistent(sample, 5)
            labels = sample["labels"]
            assert labels["valid"].any(), "the object must survive in at least one frame"
            assert labels["class_labels"].eq(0).all()
            pixels = denormalize(sample["pixel_values"])
            for t in range(5):
                checked += assert_mask_on_color(pixels[t], labels["masks"][t].numpy(), MAGENTA)
            if crop_prob == 0.0:
                height, width = sample["resized_size"].tolist()
                assert min(height, width) in (288, 320, 352, 392, 416, 448, 480, 512) or max(height, width) == 640
    assert checked > 20


def test_train_transform_flip_swaps_left_right_and_moves_the_mask(ytvos_root):
    row = load_ref_youtube_vos(ytvos_root, "train")[0]
    kwargs = {"crop_prob": 0.0, "photometric": False, "seed": 3}
    kept = ReferringVideoTrainTransform(5, flip_prob=0.0, **kwargs).transform_example(row)
    flipped = ReferringVideoTrainTransform(5, flip_prob=1.0, **kwargs).transform_example(row)
    assert kept["expression"] == "a person on the left"
    assert flipped["expression"] == "a person on the right"
    # Same random draws apart from the flip: identical frames, mirrored pixels and masks (up to the nearest-neighbour
    # rounding of the mask resize, which is not mirror-symmetric).
    assert torch.equal(kept["frame_indices"], flipped["frame_indices"])
    assert np.mean(kept["labels"]["masks"].numpy()[..., ::-1] != flipped["labels"]["masks"].numpy()) < 0.005
    np.testing.assert_allclose(kept["pixel_values"].numpy()[..., ::-1], flipped["pixel_values"].numpy(), atol=0.05)
    width = flipped["pixel_values"].shape[-1]
    assert (
        flipped["labels"]["masks"][0, :, width // 2 :].any()
        and not flipped["labels"]["masks"][0, :, : width // 4].any()
    )
    pixels = denormalize(flipped["pixel_values"])
    for t in range(5):
        assert_mask_on_color(pixels[t], flipped["labels"]["masks"][t].numpy(), MAGENTA)


def test_train_transform_check_marks_absent_frames(ytvos_root):
    # Object 2 is visible in frames 0-2 only: absent frames are invalid with zero boxes, and some frame stays valid.
    row = next(row for row in load_ref_youtube_vos(ytvos_root, "train") if row["obj_id"] == "2")
    invalid_seen = False
    for seed in range(8):
        sample = ReferringVideoTrainTransform(4, crop_prob=1.0, seed=seed).transform_example(row)
        assert_sample_consistent(sample, 4)
        valid = sample["labels"]["valid"]
        assert valid.any()
        for t, index in enumerate(sample["frame_indices"].tolist()):
            if index >= 3:
                assert valid[t] == 0 and not sample["labels"]["masks"][t].any()
        invalid_seen |= bool((valid == 0).any())
    assert invalid_seen


def test_train_transform_is_deterministic_and_tokenizes(ytvos_root):
    row = load_ref_youtube_vos(ytvos_root, "train")[0]

    def tokenizer(text):
        ids = [0] + [len(word) for word in text.split()] + [2]
        return {"input_ids": ids, "attention_mask": [1] * len(ids)}

    first = ReferringVideoTrainTransform(5, seed=11, tokenizer=tokenizer).transform_example(row)
    second = ReferringVideoTrainTransform(5, seed=11, tokenizer=tokenizer).transform_example(row)
    assert torch.equal(first["pixel_values"], second["pixel_values"])
    assert torch.equal(first["labels"]["masks"], second["labels"]["masks"])
    assert first["input_ids"].dtype == torch.long
    assert first["input_ids"].tolist() == tokenizer(first["expression"])["input_ids"]
    assert first["attention_mask"].tolist() == [1] * len(first["input_ids"])


def test_with_transform_batches_and_category_ids(ytvos_root):
    transform = ReferringVideoTrainTransform(3, seed=0, category_to_id={"person": 1, "dog": 2, "cat": 3})
    dataset = load_ref_youtube_vos(ytvos_root, "train").with_transform(transform)
    batch = dataset[0:3]
    assert len(batch["pixel_values"]) == 3 and batch["exp_id"] == ["0", "1", "0"]
    assert [labels["class_labels"][0].item() for labels in batch["labels"]] == [1, 2, 3]
    assert all(index is None for index in batch["valid_frame_index"])


def test_samples_collate_into_a_padded_batch(ytvos_root):

    def tokenizer(text):
        return {"input_ids": [0] + [3] * len(text.split()) + [2], "attention_mask": [1] * (len(text.split()) + 2)}

    transform = ReferringVideoTrainTransform(4, seed=1, tokenizer=tokenizer)
    samples = [transform.transform_example(row) for row in load_ref_youtube_vos(ytvos_root, "train")]
    batch = data_transforms.collate_clips(samples)
    height, width = batch["pixel_values"].shape[-2:]
    assert batch["pixel_values"].shape[:3] == (3, 4, 3) and height % 32 == 0 and width % 32 == 0
    for sample, labels in zip(samples, batch["labels"], strict=True):
        h, w = sample["resized_size"].tolist()
        assert labels["masks"].shape == (4, height, width)
        assert torch.equal(labels["masks"][:, :h, :w], sample["labels"]["masks"])


def test_expand_clip_starts(ytvos_root):
    dataset = load_ref_youtube_vos(ytvos_root, "train")
    expanded = expand_clip_starts(dataset, num_frames=4)
    assert len(expanded) == 2 * len(dataset)
    assert expanded["start_frame"] == [0, 4, 0, 4, 0, 4]
    sample = expanded.with_transform(ReferringVideoTrainTransform(1, seed=0))[1]
    assert sample["frame_indices"].tolist() == [4]
    media = expand_clip_starts(load_ref_youtube_vos(ytvos_root, "train", embed_media=True), num_frames=4)
    assert media.features == MEDIA_DATASET_FEATURES and media["start_frame"] == expanded["start_frame"]
    assert_samples_equal(ReferringVideoTrainTransform(1, seed=0)(media[1]), sample)


def test_eval_transform_full_video(ytvos_root):
    row = load_ref_youtube_vos(ytvos_root, "train")[1]  # the cyan object, absent in frames 3-5
    sample = ReferringVideoEvalTransform().transform_example(row)
    assert_sample_consistent(sample, 6)
    assert sample["frame_indices"].tolist() == list(range(6))
    assert sample["labels"]["valid"].tolist() == [1, 1, 1, 0, 0, 0]
    assert sample["resized_size"].tolist() == [360, 480] and sample["original_size"].tolist() == [HEIGHT, WIDTH]
    pixels = denormalize(sample["pixel_values"])
    for t in range(3):
        assert assert_mask_on_color(pixels[t], sample["labels"]["masks"][t].numpy(), CYAN)
    # Normalization: the background of the source is recovered.
    assert np.abs(pixels[0, 5, 5] - np.array(BACKGROUND)).max() < 3


# ---------------------------------------------------------------------------------------------------
# Ref-DAVIS17 (converted layout)
# ---------------------------------------------------------------------------------------------------


def test_ref_davis17(tmp_path):
    root = tmp_path / "ref-davis"
    frames = ["00000", "00001", "00002"]
    write_ytvos_video(root / "valid", "bike-packing", frames, with_masks=True)
    write_json(
        {"videos": {"bike-packing": {"objects": {"1": {"category": "person"}, "2": {"category": "dog"}}}}},
        root / "valid" / "meta.json",
    )
    expressions = {}
    for obj in (1, 2):
        for k, kind in enumerate(("first a1", "full a1", "first a2", "full a2")):
            expressions[str(4 * (obj - 1) + k)] = {"exp": f"object {obj} {kind}", "obj_id": str(obj)}
    write_json(
        {"videos": {"bike-packing": {"expressions": expressions, "frames": frames}}},
        root / "meta_expressions" / "valid" / "meta_expressions.json",
    )

    dataset = load_ref_davis17(root, "valid")
    assert len(dataset) == 8
    assert dataset["exp_id"] == [str(i) for i in range(8)]
    assert dataset["obj_id"] == ["1"] * 4 + ["2"] * 4
    assert dataset[5]["expression"] == "object 2 full a1" and dataset[5]["category"] == "dog"
    assert set(dataset["dataset"]) == {"ref-davis17"}
    np.testing.assert_array_equal(load_object_masks(dataset[0], [1])[0], ytvos_object_masks(1)[0])
    sample = dataset.with_transform(ReferringVideoEvalTransform())[4]
    assert_sample_consistent(sample, 3)
    assert_mask_on_color(denormalize(sample["pixel_values"])[0], sample["labels"]["masks"][0].numpy(), CYAN)
    with pytest.raises(ValueError, match="Unknown Ref-DAVIS17 split 'test'"):
        load_ref_davis17(root, "test")
    assert_same_media(dataset, load_ref_davis17(root, "valid", embed_media=True))


# ---------------------------------------------------------------------------------------------------
# A2D-Sentences
# ---------------------------------------------------------------------------------------------------

A2D_HEIGHT, A2D_WIDTH, A2D_FRAMES = 64, 96, 8


def a2d_masks(t):
    """Instance 2 (magenta) moves right; instance 5 (cyan) stays."""
    size = (A2D_HEIGHT, A2D_WIDTH)
    return rect_mask(12, 6 + 4 * t, 36, 30, size), rect_mask(20, 64, 30, 24, size)


def write_mp4(frames, path):
    """An MPEG-4 Part 2 video (FFmpeg's native encoder, present in every PyAV build) at near-lossless quality."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=24)
        stream.width, stream.height, stream.pix_fmt = A2D_WIDTH, A2D_HEIGHT, "yuv420p"
        stream.options = {"qscale": "1"}
        for array in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(array, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


@pytest.fixture
def a2d_root(tmp_path):
    h5py = pytest.importorskip("h5py", reason="h5py is not installed; A2D-Sentences masks (.h5) need it")
    root = tmp_path / "a2d_sentences"
    frames = [
        paint(list(zip(a2d_masks(t), (MAGENTA, CYAN), strict=True)), (A2D_HEIGHT, A2D_WIDTH)) for t in range(A2D_FRAMES)
    ]
    write_mp4(frames, root / "Release" / "clips320H" / "clipA.mp4")
    for t, frame in enumerate(frames):
        path = tmp_path / "a2d_frames" / "clipA" / f"{t + 1:05d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(frame).save(path)
    masks_dir = root / "text_annotations" / "a2d_annotation_with_instances" / "clipA"
    masks_dir.mkdir(parents=True)
    for frame_idx in (3, 7):
        magenta, cyan = a2d_masks(frame_idx - 1)
        with h5py.File(masks_dir / f"{frame_idx:05d}.h5", "w") as file:
            file["instance"] = np.array([2.0, 5.0])
            # Stored transposed, [instances, W, H], as MATLAB writes them.
            file["reMask"] = np.stack([magenta, cyan]).transpose(0, 2, 1).astype(np.float64)
    with h5py.File(masks_dir / "00001.h5", "w") as file:
        file["instance"] = np.array([5.0])
        file["reMask"] = a2d_masks(0)[1].T.astype(np.float64)  # a single instance is stored as one 2-D mask
    write_json(
        [["the man running RIGHT", "clipA", 3, 2], ["a still box", "clipA", 7, 5]],
        root / "a2d_sentences_single_frame_train_annotations.json",
    )
    write_json([["a box", "clipA", 1, 5]], root / "a2d_sentences_single_frame_test_annotations.json")
    return root


def test_a2d_sentences_rows_and_masks(a2d_root):
    dataset = load_a2d_sentences(a2d_root, "train")
    assert len(dataset) == 2
    row = dataset[0]
    assert (row["video_id"], row["exp_id"], row["obj_id"], row["expression"]) == (
        "clipA",
        "0",
        "2",
        "the man running RIGHT",
    )
    assert row["frames"] == [] and row["video"] == str(a2d_root / "Release" / "clips320H" / "clipA.mp4")
    assert row["mask_type"] == "a2d_h5" and row["annotated_frame"] == 2
    assert row["masks"] == [
        str(a2d_root / "text_annotations" / "a2d_annotation_with_instances" / "clipA" / "00003.h5")
    ]
    assert row["image_id"] == "v_clipA_f_3_i_2"
    np.testing.assert_array_equal(load_object_masks(row, [])[0], a2d_masks(2)[0])
    np.testing.assert_array_equal(load_object_masks(dataset[1], [])[0], a2d_masks(6)[1])
    test_row = load_a2d_sentences(a2d_root, "test")[0]
    np.testing.assert_array_equal(load_object_masks(test_row, [])[0], a2d_masks(0)[1])

    assert count_video_frames(row) == A2D_FRAMES
    decoded = np.asarray(load_video_frames(row, [2])[0], dtype=np.float32)
    assert decoded.shape == (A2D_HEIGHT, A2D_WIDTH, 3)
    assert np.abs(decoded[binary_erosion(a2d_masks(2)[0], iterations=3)].mean(0) - MAGENTA).max() < 25


@pytest.mark.parametrize("extracted", [False, True], ids=["mp4", "extracted-frames"])
def test_a2d_sentences_eval_window(a2d_root, extracted):
    frames_dir = a2d_root.parent / "a2d_frames" if extracted else None
    dataset = load_a2d_sentences(a2d_root, "train", frames_dir=frames_dir)
    if extracted:
        assert dataset[0]["frame_names"] == [f"{t:05d}" for t in range(1, A2D_FRAMES + 1)]
    transform = ReferringVideoEvalTransform(num_frames=5)
    sample = dataset.with_transform(transform)[0]
    assert sample["frame_indices"].tolist() == [0, 1, 2, 3, 4]
    assert sample["valid_frame_index"] == 2 and sample["image_id"] == "v_clipA_f_3_i_2"
    assert_sample_consistent(sample, 5, num_label_frames=1)
    assert sample["resized_size"].tolist() == [360, 540]
    pixels = denormalize(sample["pixel_values"])[sample["valid_frame_index"]]
    assert_mask_on_color(pixels, sample["labels"]["masks"][0].numpy(), MAGENTA, tolerance=50)

    # Near the end, the window repeats the last frame; the annotated frame's first occurrence is used.
    sample = transform.transform_example(dataset[1])
    assert sample["frame_indices"].tolist() == [4, 5, 6, 7, 7] and sample["valid_frame_index"] == 2
    with pytest.raises(ValueError, match="num_frames"):
        ReferringVideoEvalTransform().transform_example(dataset[0])


@pytest.mark.parametrize("extracted", [False, True], ids=["mp4", "extracted-frames"])
def test_a2d_sentences_media_form_carries_the_video_and_the_masks(a2d_root, tmp_path, extracted):
    frames_dir = a2d_root.parent / "a2d_frames" if extracted else None
    paths = load_a2d_sentences(a2d_root, "train", frames_dir=frames_dir)
    media = load_a2d_sentences(a2d_root, "train", frames_dir=frames_dir, embed_media=True)
    expected = [row_media(row) for row in paths]
    samples = [ReferringVideoEvalTransform(num_frames=5)(row) for row in paths]

    loaded = save_elsewhere_and_delete(media, tmp_path, a2d_root, *([frames_dir] if extracted else []))
    row = loaded[0]
    # The .h5 masks, not images, were decoded into the referred instance's binary mask of the annotated frame.
    assert row["mask_type"] == "binary" and len(row["masks"]) == 1
    assert Image.open(io.BytesIO(row["masks"][0]["bytes"])).mode == "1"
    if extracted:
        assert row["video"] is None and [frame["path"] for frame in row["frames"]] == [
            f"{t:05d}.png" for t in range(1, A2D_FRAMES + 1)
        ]
    else:  # the MP4 itself, as a `datasets.Video`
        assert row["frames"] == [] and row["video"]["path"] == "clipA.mp4" and len(row["video"]["bytes"]) > 0
    for row, (frames, masks) in zip(loaded, expected, strict=True):
        np.testing.assert_array_equal(row_media(row)[0], frames)
        np.testing.assert_array_equal(row_media(row)[1], masks)
    for row, sample in zip(loaded, samples, strict=True):
        assert_samples_equal(ReferringVideoEvalTransform(num_frames=5)(row), sample)


def test_a2d_sentences_train_window(a2d_root):
    row = load_a2d_sentences(a2d_root, "train")[0]
    for seed in range(4):
        sample = ReferringVideoTrainTransform(5, photometric=False, seed=seed).transform_example(row)
        assert_sample_consistent(sample, 5, num_label_frames=1)
        assert sample["labels"]["valid"].tolist() == [1]
        index = sample["valid_frame_index"]
        assert sample["frame_indices"][index] == 2
        pixels = denormalize(sample["pixel_values"])[index]
        assert_mask_on_color(pixels, sample["labels"]["masks"][0].numpy(), MAGENTA, tolerance=50)
        assert sample["expression"] in ("the man running right", "the man running left")


# ---------------------------------------------------------------------------------------------------
# JHMDB-Sentences
# ---------------------------------------------------------------------------------------------------


def jhmdb_mask(t):
    return rect_mask(20 + 5 * t, 40, 50, 40)


def test_jhmdb_sentences(tmp_path):
    root = tmp_path / "jhmdb_sentences"
    video_dir = root / "Rename_Images" / "brush_hair" / "girl_brushing_1"
    video_dir.mkdir(parents=True)
    for t in range(6):
        Image.fromarray(paint([(jhmdb_mask(t), ORANGE)])).save(video_dir / f"{t + 1:05d}.png")
    mask_file = root / "puppet_mask" / "brush_hair" / "girl_brushing_1" / "puppet_mask.mat"
    mask_file.parent.mkdir(parents=True)
    savemat(mask_file, {"part_mask": np.stack([jhmdb_mask(t) for t in range(6)], axis=-1).astype(np.uint8)})
    # Paths as in the released metadata: relative to the original's hard-coded "data/" folder.
    write_json(
        [
            [
                "girl_brushing_1",
                "jhmdb_sentences/Rename_Images/brush_hair/girl_brushing_1/00002.png",
                "jhmdb_sentences/puppet_mask/brush_hair/girl_brushing_1/puppet_mask.mat",
                6,
                "Girl brushing her hair",
            ]
        ],
        root / "jhmdb_sentences_samples_metadata.json",
    )
    dataset = load_jhmdb_sentences(root)
    row = dataset[0]
    assert (row["video_id"], row["expression"], row["annotated_frame"]) == (
        "girl_brushing_1",
        "Girl brushing her hair",
        1,
    )
    assert row["frames"] == [str(video_dir / f"{t:05d}.png") for t in range(1, 7)]
    assert row["masks"] == [str(mask_file)] and row["mask_type"] == "jhmdb_mat"
    assert row["image_id"] == "v_girl_brushing_1_f_2"
    np.testing.assert_array_equal(load_object_masks(row, [])[0], jhmdb_mask(1))

    sample = dataset.with_transform(ReferringVideoEvalTransform(num_frames=5))[0]
    assert sample["frame_indices"].tolist() == [0, 0, 1, 2, 3] and sample["valid_frame_index"] == 2
    assert sample["expression"] == "girl brushing her hair"
    assert_sample_consistent(sample, 5, num_label_frames=1)
    pixels = denormalize(sample["pixel_values"])
    assert_mask_on_color(pixels[2], sample["labels"]["masks"][0].numpy(), ORANGE)
    assert not np.allclose(pixels[3], pixels[2])

    media = load_jhmdb_sentences(root, embed_media=True)
    assert media[0]["mask_type"] == "binary"
    assert_same_media(dataset, media)


# ---------------------------------------------------------------------------------------------------
# RefCOCO / RefCOCO+ / RefCOCOg
# ---------------------------------------------------------------------------------------------------


def test_refcoco(tmp_path):
    from pycocotools import mask as mask_utils

    root = tmp_path / "coco"
    cat, dog = rect_mask(20, 20, 60, 50), rect_mask(50, 100, 40, 50)
    save_jpeg(paint([(cat, MAGENTA), (dog, CYAN)]), root / "train2014" / "COCO_train2014_000000000042.jpg")
    polygon = [[20.0, 20.0, 70.0, 20.0, 70.0, 80.0, 20.0, 80.0]]
    rle = mask_utils.encode(np.asfortranarray(dog.astype(np.uint8)))
    images, annotations = [], []
    for image_id, caption, segmentation, bbox, original_ann in (
        (1, "Cat on the left", polygon, [20.0, 20.0, 50.0, 60.0], 7),
        (2, "left cat", polygon, [20.0, 20.0, 50.0, 60.0], 7),
        (3, "the dog", {"size": rle["size"], "counts": rle["counts"].decode()}, [100.0, 50.0, 50.0, 40.0], 8),
    ):
        images.append(
            {
                "file_name": "COCO_train2014_000000000042.jpg",
                "height": HEIGHT,
                "width": WIDTH,
                "original_id": 42,
                "id": image_id,
                "caption": caption,
                "dataset_name": "refcoco",
            }
        )
        annotations.append(
            {
                "segmentation": segmentation,
                "area": 1.0,
                "iscrowd": 0,
                "bbox": bbox,
                "image_id": image_id,
                "category_id": 17 if original_ann == 7 else 18,
                "id": image_id,
                "original_id": original_ann,
            }
        )
    categories = [
        {"id": 17, "name": "cat", "supercategory": "animal"},
        {"id": 18, "name": "dog", "supercategory": "animal"},
    ]
    write_json(
        {"images": images, "annotations": annotations, "categories": categories},
        root / "refcoco" / "instances_refcoco_train.json",
    )

    dataset = load_refcoco(root, "refcoco", "train")
    assert len(dataset) == 3 and set(dataset["dataset"]) == {"refcoco"}
    row = dataset[0]
    assert (row["video_id"], row["exp_id"], row["obj_id"], row["category"]) == ("42", "1", "7", "cat")
    assert row["frames"] == [str(root / "train2014" / "COCO_train2014_000000000042.jpg")]
    assert row["bbox"] == [20.0, 20.0, 50.0, 60.0] and row["image_id"] == "1"
    np.testing.assert_array_equal(load_object_masks(dataset[2], [0])[0], dog)
    assert np.mean(load_object_masks(row, [0])[0] == cat) > 0.98  # polygon rasterization

    transform = ReferringVideoTrainTransform.for_images(photometric=False, crop_prob=0.0, flip_prob=1.0, seed=0)
    sample = transform.transform_example(row)
    assert_sample_consistent(sample, 1)
    assert sample["expression"] == "cat on the right"
    assert min(sample["resized_size"].tolist()) in range(480, 769, 32) or max(sample["resized_size"].tolist()) == 800
    assert_mask_on_color(denormalize(sample["pixel_values"])[0], sample["labels"]["masks"][0].numpy(), MAGENTA)
    # A one-image row also forms a static multi-frame clip.
    sample = ReferringVideoTrainTransform(3, seed=0).transform_example(dataset[2])
    assert sample["frame_indices"].tolist() == [0, 0, 0]
    assert_sample_consistent(sample, 3)

    with pytest.raises(FileNotFoundError, match="instances_refcocog_val.json"):
        load_refcoco(root, "refcocog", "val")
    assert_same_media(dataset, load_refcoco(root, "refcoco", "train", embed_media=True))


# ---------------------------------------------------------------------------------------------------
# Building blocks
# ---------------------------------------------------------------------------------------------------


def test_text_helpers():
    assert clean_expression("  A Man\tin  RED ") == "a man in red"
    assert swap_left_right("the bright cat on the left, leftmost right-hand") == (
        "the bright cat on the right, rightmost left-hand"
    )
    assert swap_left_right("an upright man") == "an upright man"


def test_frame_sampling():
    rng = np.random.default_rng(0)
    for num_video_frames, center in ((30, 0), (30, 15), (30, 29), (4, 2), (2, 1), (1, 0)):
        indices = sample_train_frame_indices(num_video_frames, 5, center, rng)
        assert len(indices) == 5 and indices == sorted(indices) and center in indices
        assert all(0 <= i < num_video_frames for i in indices)
        if num_video_frames >= 8:
            assert len(set(indices)) >= 4
    assert sample_train_frame_indices(10, 1, 4, rng) == [4]
    first = sample_train_frame_indices(50, 6, 20, np.random.default_rng(5))
    assert first == sample_train_frame_indices(50, 6, 20, np.random.default_rng(5))
    assert centered_window_indices(10, 5, 0) == [0, 0, 0, 1, 2]
    assert centered_window_indices(10, 6, 5) == [2, 3, 4, 5, 6, 7]
    assert centered_window_indices(3, 5, 2) == [0, 1, 2, 2, 2]
    assert get_resize_output_size(480, 854, 360, 640) == (360, 640)
    assert get_resize_output_size(480, 910, 360, 640) == (338, 640)
    assert get_resize_output_size(720, 1280, 360, 640) == (360, 640)
    assert get_resize_output_size(300, 200, 360, 640) == (540, 360)


def test_photometric_distort_is_seeded():
    image = Image.fromarray(paint([(rect_mask(10, 10, 40, 40), MAGENTA)]))
    outputs = [np.asarray(photometric_distort(image, np.random.default_rng(seed))) for seed in (1, 1, 2, 3, 4)]
    assert np.array_equal(outputs[0], outputs[1])
    assert all(output.shape == (HEIGHT, WIDTH, 3) and output.dtype == np.uint8 for output in outputs)
    assert any(not np.array_equal(output, np.asarray(image)) for output in outputs)
