"""Video loading, preprocessing, the processor, post-processing and the export helpers."""

import logging
import re
import sys
import tracemalloc
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from PIL import Image, PngImagePlugin
from torch.nn import functional as F
from transformers import AutoProcessor

from helpers import assert_masks_equal_up_to_rounding, randomize_weights, real_video, unit_test_config
from referformer import ReferFormerForReferringVideoObjectSegmentation, ReferFormerProcessor, ReferFormerVideoProcessor
from referformer.cli_presets import build_shapes_tokenizer
from referformer.modeling_referformer import ReferFormerSegmentationOutput
from referformer.processing_referformer import get_resize_output_size
from referformer.video_io import (
    count_video_file_frames,
    is_one_video,
    iter_video_frames,
    list_frame_files,
    load_video,
    read_frame_image,
    split_videos,
    video_frame_names,
)
from referformer.visualization import VideoWriter, overlay_masks, write_palette_masks, write_video


MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


def synthetic_frames(num_frames=6, height=96, width=128):
    """Smooth gradients with a moving bright square: easy on video codecs."""
    y, x = np.mgrid[0:height, 0:width]
    frames = []
    for index in range(num_frames):
        frame = np.stack([(x * 2) % 256, (y * 2) % 256, np.full_like(x, 80)], -1).astype(np.uint8)
        frame[20:50, 10 + 8 * index : 40 + 8 * index] = (250, 250, 40)
        frames.append(frame)
    return frames


@pytest.fixture
def processor():
    return ReferFormerProcessor(ReferFormerVideoProcessor(), build_shapes_tokenizer())


# ----------------------------------------------------------------------------- loading


def test_mp4_and_jpeg_folder_decode_to_the_same_frames(tmp_path):
    frames = synthetic_frames()
    write_video(frames, tmp_path / "clip.mp4", fps=5)
    folder = tmp_path / "frames"
    folder.mkdir()
    for index, frame in enumerate(frames):
        Image.fromarray(frame).save(folder / f"{index}.jpg", quality=95)  # names 0..5: natural order matters below
    (folder / "notes.txt").write_text("not a frame")
    from_video, video_indices = load_video(tmp_path / "clip.mp4")
    from_folder, folder_indices = load_video(folder)
    assert video_indices == folder_indices == list(range(6))
    for decoded_video, decoded_folder, original in zip(from_video, from_folder, frames):
        assert decoded_video.shape == decoded_folder.shape == original.shape
        assert np.abs(decoded_video.astype(int) - original).mean() < 6
        assert np.abs(decoded_folder.astype(int) - original).mean() < 3


@pytest.mark.parametrize("name", ["bikes.mp4", "carphone_pristine.mp4"])
def test_real_mp4_decodes_to_the_frames_pyav_reports(name):
    path = real_video(name)
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        reported = (stream.frames, stream.codec_context.height, stream.codec_context.width)
        reference = [frame.to_ndarray(format="rgb24") for frame in container.decode(stream)]
    assert len(reference) == reported[0]
    frames, indices = load_video(path)
    assert len(frames) == reported[0] and indices == list(range(reported[0]))
    assert all(frame.shape == (*reported[1:], 3) and frame.dtype == np.uint8 for frame in frames)
    frames, indices = load_video(path, frame_stride=7, max_frames=5)
    assert indices == [0, 7, 14, 21, 28]
    for frame, index in zip(frames, indices):
        assert np.array_equal(frame, reference[index])
    # Two different real frames: the decoder does not hand back the same buffer.
    assert np.abs(frames[0].astype(int) - frames[-1]).mean() > 1


def test_processor_on_a_real_mp4_keeps_the_sampled_indices_and_sizes(processor):
    path = real_video("bikes.mp4")  # 640x272, 250 frames
    inputs = processor(videos=str(path), text="a man riding a bike", frame_stride=50, max_frames=4)
    assert inputs["frame_indices"].tolist() == [[0, 50, 100, 150]]
    assert inputs["original_sizes"].tolist() == [[272, 640]]
    height, width = get_resize_output_size(272, 640, 360)
    assert inputs["resized_sizes"].tolist() == [[height, width]] and (height, width) == (360, 847)
    assert inputs["pixel_values"].shape == (1, 4, 3, 360, 847)
    frames, _ = load_video(path, frame_stride=50, max_frames=4)
    expected = torch.from_numpy(np.array(Image.fromarray(frames[2]).resize((847, 360), Image.BILINEAR)))
    expected = (expected.permute(2, 0, 1).float() / 255 - MEAN[0]) / STD[0]
    torch.testing.assert_close(inputs["pixel_values"][0, 2], expected, rtol=0, atol=1e-5)


def test_pyav_is_needed_only_to_decode_a_file(tmp_path, processor, monkeypatch):
    frames = synthetic_frames(num_frames=2)
    write_video(frames, tmp_path / "clip.mp4", fps=5)
    expected = processor(videos=np.stack(frames), text="the square")
    monkeypatch.setitem(sys.modules, "av", None)  # PyAV not installed
    inputs = processor(videos=np.stack(frames), text="the square")
    assert torch.equal(inputs["pixel_values"], expected["pixel_values"])
    with pytest.raises(ImportError, match="needs PyAV: `pip install av`"):
        processor(videos=tmp_path / "clip.mp4", text="the square")


def test_folder_frames_are_sorted_naturally_and_sampled(tmp_path):
    for index in (1, 2, 10, 11):
        Image.fromarray(np.full((40, 40, 3), index, dtype=np.uint8)).save(tmp_path / f"frame{index}.png")
    frames, indices = load_video(tmp_path, frame_stride=2)
    assert [int(frame[0, 0, 0]) for frame in frames] == [1, 10]
    assert indices == [0, 2]
    frames, indices = load_video(tmp_path, max_frames=3)
    assert [int(frame[0, 0, 0]) for frame in frames] == [1, 2, 10]


def test_one_frame_listing_for_folders_paths_and_datasets(tmp_path):
    """The processor, inference, the command line and the A2D/JHMDB loaders list frames the same way: images of any
    extension case in natural order, other files ignored."""
    for index, name in enumerate(("f2.JPG", "f10.png", "f1.jpeg", "f3.webp")):
        Image.fromarray(np.full((40, 40, 3), index, dtype=np.uint8)).save(tmp_path / name)
    (tmp_path / "notes.txt").write_text("not a frame")
    files = list_frame_files(tmp_path)
    assert [path.name for path in files] == ["f1.jpeg", "f2.JPG", "f3.webp", "f10.png"]
    assert video_frame_names(tmp_path, [0, 3]) == ["f1", "f10"]
    assert video_frame_names([str(path) for path in files[2:]], [1]) == ["f10"]
    assert video_frame_names(np.zeros((12, 40, 40, 3), np.uint8), [0, 11]) == ["00000", "00011"]
    from_paths = list(iter_video_frames([str(path) for path in files], frame_stride=2))
    assert [(index, int(frame[0, 0, 0])) for index, frame in from_paths] == [(0, 2), (2, 3)]
    with pytest.raises(FileNotFoundError, match="is not a directory"):
        list_frame_files(tmp_path / "missing")


def test_one_rule_tells_one_video_from_several_and_an_image_is_one_frame(tmp_path):
    """`is_one_video`: frames (PIL images, arrays [H, W, C], image paths) make one video, anything else in a list is a
    video each; mixes are refused. An image (PIL image or image file) alone is a one-frame video."""
    frame = np.full((40, 48, 3), 7, np.uint8)
    Image.fromarray(frame).save(tmp_path / "image.png")
    (tmp_path / "frames.jpg").mkdir()  # a folder, whatever its name: a video
    image = str(tmp_path / "image.png")
    for one in (image, Image.fromarray(frame), [frame, frame], [Image.fromarray(frame)], [image, image], (frame,),
                np.zeros((2, 40, 48, 3), np.uint8), "clip.mp4", iter([frame])):
        assert is_one_video(one)
    for several in (["a.mp4", "b.mp4"], [[frame], [frame]], [np.zeros((2, 40, 48, 3), np.uint8)], [tmp_path / "frames.jpg"]):
        assert not is_one_video(several) and split_videos(several) == list(several)
    with pytest.raises(ValueError, match=re.escape("not both: item 1 is a frame, item 0 a video")):
        is_one_video(["a.mp4", image])
    with pytest.raises(ValueError, match="No video given"):
        split_videos([])
    for video in (image, Image.fromarray(frame), [image]):
        [(index, decoded)] = list(iter_video_frames(video))
        assert index == 0 and np.array_equal(decoded, frame)
    assert video_frame_names(image, [0]) == ["image"]
    with pytest.raises(ValueError, match=re.escape("Expected one video, got a list of 2 videos")):
        next(iter_video_frames(["a.mp4", "b.mp4"]))


def test_frame_names_keep_inner_dots_and_clashing_names_are_refused(tmp_path):
    """A frame's name is its file name minus the last suffix, computed once: writers never strip it again. Frames
    sharing a name are refused where frames are listed; a writer refuses to write one name twice."""
    dotted = tmp_path / "dotted"
    dotted.mkdir()
    for index in range(3):
        Image.fromarray(np.full((8, 8, 3), index, np.uint8)).save(dotted / f"img.{index:03d}.jpg")
    names = video_frame_names(dotted, [0, 1, 2])
    assert names == ["img.000", "img.001", "img.002"]
    folder = write_palette_masks(np.zeros((3, 8, 8), bool), tmp_path / "masks", names)
    assert sorted(path.name for path in folder.iterdir()) == ["img.000.png", "img.001.png", "img.002.png"]

    clash = tmp_path / "clash"
    clash.mkdir()
    for name in ("00000.jpg", "00000.png", "00001.jpg"):
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(clash / name)
    message = f"The frames {clash / '00000.jpg'} and {clash / '00000.png'} share the name '00000'"
    for call in (lambda: list_frame_files(clash), lambda: video_frame_names(clash, [0]), lambda: load_video(clash)):
        with pytest.raises(ValueError, match=re.escape(message)):
            call()
    with pytest.raises(ValueError, match="share the name 'x'"):
        video_frame_names([str(dotted / "img.000.jpg"), "a/x.png", "b/x.jpg"], [0])

    with pytest.raises(ValueError, match="The frame name '00000' is written twice into"):
        write_palette_masks(np.zeros((2, 8, 8), bool), tmp_path / "twice", ["00000", "00000"])
    assert sorted(path.name for path in tmp_path.iterdir()) == ["clash", "dotted", "masks"]


def test_video_file_frame_count_and_a_clear_error_on_a_broken_file(tmp_path):
    write_video(synthetic_frames(num_frames=4), tmp_path / "clip.mp4", fps=5)
    assert count_video_file_frames(tmp_path / "clip.mp4") == 4
    (tmp_path / "broken.mp4").write_bytes(b"not a video")
    with pytest.raises(ValueError, match="Cannot decode video file"):
        count_video_file_frames(tmp_path / "broken.mp4")


def test_array_layouts_grayscale_and_rgba_become_rgb():
    rgb = np.random.default_rng(0).integers(0, 256, (2, 40, 50, 3), dtype=np.uint8)
    channels_first = torch.from_numpy(rgb).permute(0, 3, 1, 2)
    assert np.array_equal(load_video(channels_first)[0][1], rgb[1])
    gray = [Image.fromarray(rgb[0, :, :, 0])]
    assert np.array_equal(load_video(gray)[0][0], np.repeat(rgb[0, :, :, :1], 3, axis=-1))
    rgba = np.concatenate([rgb, np.full((2, 40, 50, 1), 7, np.uint8)], -1)
    assert np.array_equal(load_video(rgba)[0][0], rgb[0])
    floats = rgb.astype(np.float32) / 255
    assert np.array_equal(load_video(floats)[0][0], rgb[0])


def test_sixteen_bit_images_and_any_byte_order_convert_by_type(tmp_path, monkeypatch):
    """Big-endian arrays convert like native ones; a 32-bit integer ("I") image is 16-bit when read from a PNG or PGM
    file (scaled), 8-bit otherwise (a TIFF holding 0..255 stays as is, larger values are refused)."""
    values = (np.arange(48 * 40).reshape(48, 40) * 30).astype(np.uint16)  # up to 57570
    scaled = np.round(values / 257.0).astype(np.uint8)
    eight_bit = values % 256
    for dtype in (">u2", "<u2"):
        assert np.array_equal(load_video(values.astype(dtype)[None, :, :, None])[0][0][:, :, 0], scaled)
    assert np.array_equal(load_video(eight_bit.astype(">i4")[None, :, :, None])[0][0][:, :, 0], eight_bit)
    floats = np.linspace(0, 1, 48 * 40).reshape(1, 48, 40, 1)
    assert np.array_equal(load_video(floats.astype(">f4"))[0][0], load_video(floats.astype("<f4"))[0][0])

    Image.fromarray(eight_bit.astype(np.int32)).save(tmp_path / "eight.tif")
    (tmp_path / "sixteen.pgm").write_bytes(b"P5 40 48 65535\n" + values.astype(">u2").tobytes())
    Image.fromarray(values).save(tmp_path / "sixteen.png")
    monkeypatch.setitem(PngImagePlugin._MODES, (16, 0), ("I", "I;16B"))  # how older Pillow versions open it
    for name, expected in (("eight.tif", eight_bit), ("sixteen.pgm", scaled), ("sixteen.png", scaled)):
        with Image.open(tmp_path / name) as image:
            assert image.mode == "I", name
        assert np.array_equal(read_frame_image(tmp_path / name), np.repeat(expected[:, :, None], 3, axis=-1)), name
    Image.fromarray(values.astype(np.int32)).save(tmp_path / "wide.tif")
    with pytest.raises(ValueError, match=re.escape("int32 frames must hold 8-bit values (0..255), got [0, 57570]")):
        read_frame_image(tmp_path / "wide.tif")


@pytest.mark.parametrize(
    "size, longest, expected",
    [((100, 150), None, (360, 540)), ((720, 1280), None, (360, 640)), ((720, 1280), 640, (360, 640)),
     ((480, 1000), 640, (307, 639)), ((360, 500), None, (360, 500)), ((1000, 480), None, (750, 360))],
)
def test_resize_rule_matches_the_original(size, longest, expected):
    assert get_resize_output_size(*size, 360, longest) == expected


def test_preprocessing_values_match_the_original_pipeline():
    """PIL bilinear resize to shorter side 360, ToTensor, ImageNet normalization, zero padding (the original)."""
    rng = np.random.default_rng(1)
    video_a = rng.integers(0, 256, (2, 120, 160, 3), dtype=np.uint8)
    video_b = rng.integers(0, 256, (2, 100, 200, 3), dtype=np.uint8)
    outputs = ReferFormerVideoProcessor()([video_a, video_b])
    assert outputs["pixel_values"].shape == (2, 2, 3, 360, 720)
    assert outputs["resized_sizes"].tolist() == [[360, 480], [360, 720]]
    assert outputs["original_sizes"].tolist() == [[120, 160], [100, 200]]
    for index, (video, (height, width)) in enumerate(zip((video_a, video_b), ((360, 480), (360, 720)))):
        expected = torch.stack(
            [torch.from_numpy(np.asarray(Image.fromarray(frame).resize((width, height), Image.BILINEAR))) for frame in video]
        ).permute(0, 3, 1, 2).float() / 255
        expected = (expected - MEAN) / STD
        torch.testing.assert_close(outputs["pixel_values"][index, :, :, :height, :width], expected, rtol=0, atol=1e-6)
        assert (outputs["pixel_values"][index, :, :, height:, :] == 0).all()
        assert (outputs["pixel_values"][index, :, :, :, width:] == 0).all()
        assert outputs["pixel_mask"][index, :, :height, :width].all() and outputs["pixel_mask"][index].sum() == 2 * height * width
    padded = ReferFormerVideoProcessor(size_divisor=32)([video_a])
    assert padded["pixel_values"].shape[-2:] == (384, 480)


def test_frames_of_different_sizes_are_refused():
    frames = [np.zeros((100, 150, 3), np.uint8), np.zeros((200, 300, 3), np.uint8)]
    with pytest.raises(ValueError, match="frame 0 is 150x100, frame 1 is 300x200"):
        ReferFormerVideoProcessor()(frames)


# ----------------------------------------------------------------------------- processor


def test_one_video_with_three_sentences_equals_three_calls(processor):
    torch.manual_seed(0)
    config = unit_test_config(text_config={**unit_test_config().text_config.to_dict(), "vocab_size": 60})
    model = randomize_weights(ReferFormerForReferringVideoObjectSegmentation(config).eval())
    video = synthetic_frames(num_frames=2, height=72, width=96)
    sentences = ["the yellow square", "a square moving right", "Background  GRADIENT"]
    processor.video_processor.size = {"shortest_edge": 64}
    with torch.no_grad():
        batched_inputs = processor(videos=video, text=sentences)
        assert batched_inputs["pixel_values"].shape[0] == 3
        batched = processor.post_process_referring_video_segmentation(
            model(**batched_inputs), batched_inputs["original_sizes"], batched_inputs["resized_sizes"]
        )
        for sentence, result in zip(sentences, batched):
            inputs = processor(videos=video, text=sentence)
            outputs = model(**inputs)
            single = processor.post_process_referring_video_segmentation(
                outputs, inputs["original_sizes"], inputs["resized_sizes"]
            )[0]
            assert single["query_index"] == result["query_index"]
            height, width = (-(-size // 4) for size in inputs["resized_sizes"][0].tolist())
            mask_logits = outputs.pred_masks[0, :, single["query_index"], :height, :width]
            probabilities = processor.video_processor.mask_probabilities(mask_logits, *inputs["original_sizes"][0].tolist())
            assert_masks_equal_up_to_rounding(result["masks"], single["masks"], probabilities)
            torch.testing.assert_close(single["boxes"], result["boxes"], atol=1e-4, rtol=1e-5)
            torch.testing.assert_close(single["scores"], result["scores"], atol=1e-5, rtol=1e-5)
    assert batched[0]["masks"].shape == (2, 72, 96) and batched[0]["masks"].dtype == torch.bool


def test_sentences_are_normalized_and_truncated_with_a_warning(processor, caplog):
    inputs = processor(videos=synthetic_frames(1), text="  The   SQUARE ")
    assert processor.tokenizer.decode(inputs["input_ids"][0], skip_special_tokens=True) == "the square"
    with caplog.at_level(logging.WARNING):
        inputs = processor(videos=synthetic_frames(1), text="the big red circle on the left " * 3)
    assert inputs["input_ids"].shape[1] == processor.tokenizer.model_max_length
    assert "truncated" in caplog.text


def test_processor_save_and_load_round_trip(tmp_path, processor):
    processor.video_processor.size = {"shortest_edge": 200, "longest_edge": 300}
    processor.save_pretrained(tmp_path)
    reloaded = AutoProcessor.from_pretrained(tmp_path)
    assert isinstance(reloaded, ReferFormerProcessor)
    assert reloaded.video_processor.size.longest_edge == 300
    video, text = synthetic_frames(2), ["the yellow square", "gradient"]
    expected, actual = processor(videos=video, text=text), reloaded(videos=video, text=text)
    assert expected.keys() == actual.keys()
    for key in expected:
        assert torch.equal(expected[key], actual[key]), key


@pytest.mark.parametrize(
    "videos, text, error, message",
    [
        (None, "x", ValueError, "needs both"),
        ("VIDEO", "", ValueError, "non-empty string"),
        ("VIDEO", ["ok", 3], ValueError, "non-empty string"),
        ("VIDEO", [], ValueError, "non-empty list"),
        (["VIDEO", "VIDEO"], [], ValueError, "non-empty list"),
        ([], "x", ValueError, "No video given"),
        (["FRAME", "VIDEO"], "x", ValueError, "not both: item 0 is a frame, item 1 a video"),
        ({"video": "VIDEO"}, "x", TypeError, "A video is a video file, a frame folder, an image, a list of frames"),
        ("MISSING", "x", FileNotFoundError, "Video not found"),
        ("EMPTY_FOLDER", "x", ValueError, "No frame images"),
        ("GARBAGE", "x", ValueError, "Cannot decode video file"),
    ],
)
def test_bad_inputs_get_clear_errors(tmp_path, processor, videos, text, error, message):
    (tmp_path / "empty").mkdir()
    (tmp_path / "garbage.mp4").write_bytes(b"this is not a video")
    substitutions = {
        "VIDEO": synthetic_frames(1),
        "FRAME": synthetic_frames(1)[0],
        "MISSING": tmp_path / "nope.mp4",
        "EMPTY_FOLDER": tmp_path / "empty",
        "GARBAGE": tmp_path / "garbage.mp4",
    }
    if isinstance(videos, list):
        videos = [substitutions.get(video, video) for video in videos]
    elif isinstance(videos, dict):
        videos = {key: substitutions[value] for key, value in videos.items()}
    else:
        videos = substitutions.get(videos, videos)
    with pytest.raises(error, match=message):
        processor(videos=videos, text=text)


def test_misspelt_keywords_are_named(processor):
    frames = synthetic_frames(1)
    with pytest.raises(TypeError, match=re.escape(
        "ReferFormerProcessor() got an unexpected keyword argument 'video' (did you mean 'videos'?)."
    )):
        processor(video=frames, text="x")
    with pytest.raises(TypeError, match=re.escape("unexpected keyword arguments 'max_frame' (did you mean 'max_frames'?), 'colour'.")):
        processor(videos=frames, text="x", max_frame=2, colour="red")
    with pytest.raises(TypeError, match=re.escape(
        "ReferFormerVideoProcessor.preprocess() got an unexpected keyword argument 'frame_strides' (did you mean 'frame_stride'?)."
    )):
        processor.video_processor(frames, frame_strides=2)


def test_sentences_apply_to_every_video(processor):
    """B videos and S sentences: B * S entries, video-major, each the video's tensors and the sentence's tokens."""
    videos = [np.stack(synthetic_frames(2, 64, 96)), np.stack(synthetic_frames(2, 64, 96))[:, ::-1]]
    sentences = ["the yellow square", "the background", "a square moving right"]
    inputs = processor(videos=videos, text=sentences)
    assert inputs["pixel_values"].shape[0] == inputs["input_ids"].shape[0] == 6
    for video_index, video in enumerate(videos):
        for sentence_index, sentence in enumerate(sentences):
            entry = video_index * len(sentences) + sentence_index
            single = processor(videos=video, text=sentence)
            for key in ("pixel_values", "pixel_mask", "original_sizes", "resized_sizes", "frame_indices"):
                assert torch.equal(inputs[key][entry], single[key][0]), key
            tokens = inputs["input_ids"][entry][inputs["attention_mask"][entry].bool()]
            assert torch.equal(tokens, single["input_ids"][0]), sentence
    one_sentence = processor(videos=videos, text=sentences[0])
    assert torch.equal(one_sentence["pixel_values"], inputs["pixel_values"][:: len(sentences)])
    assert torch.equal(one_sentence["input_ids"][1], one_sentence["input_ids"][0])
    # One video, several sentences: its frames processed once and repeated as a view, not copied.
    one_video = processor(videos=videos[0], text=sentences)
    assert one_video["pixel_values"].shape[0] == 3 and one_video["pixel_values"].stride(0) == 0


def test_frames_too_small_for_the_model_are_refused(processor):
    with pytest.raises(ValueError, match="too small"):
        processor(videos=[np.zeros((20, 400, 3), np.uint8)], text="x", do_resize=False)
    with pytest.raises(ValueError, match="too small"):
        processor(videos=[np.zeros((100, 100, 3), np.uint8)], text="x", size={"shortest_edge": 24})
    # A 1-pixel-high frame: refused by its size before any resize (360x3600000, or 0 high with a longest edge).
    thin = [np.zeros((1, 10000, 3), np.uint8)]
    for size, resized in (({"shortest_edge": 360}, "3600000x360"), ({"shortest_edge": 360, "longest_edge": 640}, "0x0")):
        message = (
            f"The frames are 10000x1 pixels (width x height), resized to {resized}: too small or too thin for "
            "ReferFormer, which needs at least 32 pixels on each side, as given and after the resize."
        )
        with pytest.raises(ValueError, match=re.escape(message)):
            processor(videos=thin, text="x", size=size)


@pytest.mark.parametrize("option, value", [("frame_stride", 2.5), ("frame_stride", 0), ("frame_stride", True),
                                           ("max_frames", 1.0), ("max_frames", -1)])
def test_frame_stride_and_max_frames_must_be_positive_integers(processor, option, value):
    message = f"{option} must be a positive integer, got {value!r}."
    with pytest.raises(ValueError, match=re.escape(message)):
        next(iter_video_frames(synthetic_frames(3), **{option: value}))
    with pytest.raises(ValueError, match=re.escape(message)):
        processor(videos=synthetic_frames(3), text="x", **{option: value})
    assert [index for index, _ in iter_video_frames(synthetic_frames(5), np.int64(2), np.int64(2))] == [0, 2]


@pytest.mark.parametrize("threshold", [1.5, -1, 0, 1, float("nan")])
def test_post_processing_thresholds_must_be_in_the_open_unit_interval(threshold):
    processor = ReferFormerVideoProcessor()
    outputs = _outputs_for_mask(torch.zeros(1, 1, 8, 8))
    message = f"threshold must be in (0, 1), got {threshold}."
    with pytest.raises(ValueError, match=re.escape(message)):
        processor.post_process_referring_video_segmentation(outputs, [(32, 32)], threshold=threshold)
    with pytest.raises(ValueError, match=re.escape(message)):
        processor.post_process_referring_image_segmentation(outputs, [(32, 32)], threshold=threshold)


# ----------------------------------------------------------------------------- post-processing


def _outputs_for_mask(mask_logits, boxes=None):
    """Segmentation outputs with 2 queries where query 1 is the confident one and carries `mask_logits`."""
    batch_size, num_frames, height, width = mask_logits.shape
    logits = torch.full((batch_size, num_frames, 2, 1), -3.0)
    logits[:, :, 1] = 3.0
    pred_masks = torch.full((batch_size, num_frames, 2, height, width), -10.0)
    pred_masks[:, :, 1] = mask_logits
    pred_boxes = torch.full((batch_size, num_frames, 2, 4), 0.5) if boxes is None else boxes
    return ReferFormerSegmentationOutput(logits=logits, pred_boxes=pred_boxes, pred_masks=pred_masks)


def _disk(height, width, center, radius):
    y, x = np.mgrid[0:height, 0:width]
    return (x - center[0]) ** 2 + (y - center[1]) ** 2 <= radius**2


def test_post_processing_maps_a_stride_4_mask_back_to_the_original_frame():
    original_height, original_width = 200, 300
    resized_height, resized_width = get_resize_output_size(original_height, original_width, 360)  # 360 x 540
    ground_truth = _disk(original_height, original_width, center=(180, 90), radius=40)
    # Mask logits on the stride-4 grid of the resized frame (signed distance to the disk edge, in original pixels,
    # sampled at the cell centres, in pixel-index coordinates), inside the grid of a batch padded to 400 x 600.
    grid_y = (np.arange(-(-resized_height // 4)) * 4 + 2) * original_height / resized_height - 0.5
    grid_x = (np.arange(-(-resized_width // 4)) * 4 + 2) * original_width / resized_width - 0.5
    signed_distance = 40 - np.sqrt((grid_x[None] - 180) ** 2 + (grid_y[:, None] - 90) ** 2)
    padded = torch.full((1, 1, 100, 150), -50.0)
    padded[0, 0, : signed_distance.shape[0], : signed_distance.shape[1]] = torch.from_numpy(signed_distance).float()
    boxes = torch.zeros(1, 1, 2, 4)
    boxes[..., 1, :] = torch.tensor([0.6, 0.45, 80 / 300, 80 / 200])
    results = ReferFormerVideoProcessor().post_process_referring_video_segmentation(
        _outputs_for_mask(padded, boxes), [(original_height, original_width)], [(resized_height, resized_width)]
    )
    mask = results[0]["masks"][0].numpy()
    assert mask.shape == (original_height, original_width)
    iou = (mask & ground_truth).sum() / (mask | ground_truth).sum()
    assert iou > 0.99
    assert results[0]["query_index"] == 1
    torch.testing.assert_close(results[0]["boxes"][0], torch.tensor([140.0, 50.0, 220.0, 130.0]))


def test_unpadded_post_processing_is_the_original_ref_youtube_vos_rule():
    mask_logits = torch.randn(1, 3, 24, 32, generator=torch.Generator().manual_seed(0))
    results = ReferFormerVideoProcessor().post_process_referring_video_segmentation(
        _outputs_for_mask(mask_logits), [(100, 130)]
    )
    expected = F.interpolate(mask_logits[0][:, None], size=(100, 130), mode="bilinear", align_corners=False)
    assert torch.equal(results[0]["masks"], expected[:, 0].sigmoid() > 0.5)


def test_probability_interpolation_puts_the_edge_of_a_lopsided_mask_between_grid_cells(tmp_path):
    # A 6x6-cell square on a 16x16 grid with weak inside (+2) and strong outside (-200) logits: interpolating the
    # logits moves the edge almost onto the inside cells' centres; interpolating probabilities puts it halfway.
    grid = torch.full((1, 1, 16, 16), -200.0)
    grid[..., 5:11, 5:11] = 2.0
    ground_truth = torch.zeros(64, 64, dtype=torch.bool)
    ground_truth[20:44, 20:44] = True  # cells 5..10 cover pixels 20..43
    by_logits = ReferFormerVideoProcessor().post_process_referring_video_segmentation(_outputs_for_mask(grid), [(64, 64)])
    processor = ReferFormerVideoProcessor(mask_interpolation="probabilities")
    by_probabilities = processor.post_process_referring_video_segmentation(_outputs_for_mask(grid), [(64, 64)])
    assert by_logits[0]["masks"][0].sum() == 20 * 20  # pixels 22..41: shrunk by 2 on every side
    mask = by_probabilities[0]["masks"][0]
    assert torch.equal(mask.any(1), ground_truth.any(1)) and torch.equal(mask.any(0), ground_truth.any(0))
    assert (mask & ground_truth).sum() / (mask | ground_truth).sum() > 0.97  # bilinear rounds the corners off
    processor.save_pretrained(tmp_path)
    assert ReferFormerVideoProcessor.from_pretrained(tmp_path).mask_interpolation == "probabilities"
    with pytest.raises(ValueError, match="mask_interpolation"):
        ReferFormerVideoProcessor(mask_interpolation="nearest")


def test_all_queries_and_image_mode():
    mask_logits = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    processor = ReferFormerVideoProcessor()
    results = processor.post_process_referring_video_segmentation(
        _outputs_for_mask(mask_logits), [(32, 32), (16, 24)], return_all_queries=True
    )
    assert results[1]["all_masks"].shape == (2, 1, 16, 24) and results[1]["all_boxes"].shape == (2, 1, 4)
    torch.testing.assert_close(results[0]["query_scores"], torch.tensor([-3.0, 3.0]).sigmoid())
    image_results = processor.post_process_referring_image_segmentation(_outputs_for_mask(mask_logits), [(32, 32), (16, 24)])
    assert image_results[1]["masks"].shape == (16, 24) and image_results[1]["scores"].shape == ()
    # Post-processing returns torch tensors only, as transformers' processors do (the pipeline returns numpy / Python).
    for result in results + image_results:
        assert all(isinstance(value, torch.Tensor) for value in result.values()), result.keys()
    assert int(results[0]["query_index"]) == 1 and image_results[0]["query_index"].shape == ()
    with pytest.raises(ValueError, match="target sizes"):
        processor.post_process_referring_video_segmentation(_outputs_for_mask(mask_logits), [(32, 32)])


# ----------------------------------------------------------------------------- exports


def test_overlay_gif_and_mp4_exports(tmp_path):
    frames = synthetic_frames(3, 64, 80)
    masks = np.zeros((3, 64, 80), bool)
    masks[:, 10:30, 10:30] = True
    overlays = overlay_masks(frames, masks, boxes=[[10, 10, 30, 30]] * 3, text="the square")
    assert overlays[0][20, 20, 0] > frames[0][20, 20, 0] or overlays[0][20, 20, 0] == 255
    assert np.array_equal(overlays[0][60, 70], frames[0][60, 70])
    gif = write_video(overlays, tmp_path / "out.gif", fps=5)
    with Image.open(gif) as image:
        assert image.n_frames == 3
    mp4 = write_video(overlays, tmp_path / "out.mp4", fps=5)
    with av.open(str(mp4)) as container:
        assert sum(1 for _ in container.decode(video=0)) == 3
    assert sorted(path.name for path in tmp_path.iterdir()) == ["out.gif", "out.mp4"]


def test_gif_frames_are_encoded_as_they_arrive(tmp_path):
    """The GIF writer streams: its file grows while frames arrive, 50 frames need no more memory than 10, and each
    frame decodes to its own adaptive-palette colours."""
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (16, 3), dtype=np.uint8)[rng.integers(0, 16, (4, 192, 256))]  # ~25 kB a GIF frame

    def write(name, num_frames):
        sizes = []
        tracemalloc.start()
        with VideoWriter(tmp_path / name, fps=10) as writer:
            for index in range(num_frames):
                writer.write(frames[index % 4])
                sizes.append(sum(path.stat().st_size for path in tmp_path.glob(f".{Path(name).stem}.*.gif")))
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        return sizes, peak

    ten, ten_peak = write("ten.gif", 10)
    fifty, fifty_peak = write("fifty.gif", 50)
    assert 0 < fifty[19] < fifty[39]  # on disk before the block ends (PyAV writes in blocks of up to 256 kB)
    assert fifty_peak < ten_peak + frames[0].nbytes
    with Image.open(tmp_path / "fifty.gif") as gif:
        assert gif.n_frames == 50 and gif.info["duration"] == 100 and gif.info["loop"] == 0
        for index in (0, 1, 49):
            gif.seek(index)
            quantized = Image.fromarray(frames[index % 4]).convert("P", palette=Image.Palette.ADAPTIVE)
            assert np.array_equal(np.asarray(gif.convert("RGB")), np.asarray(quantized.convert("RGB")))


def test_palette_masks_are_written_completely_or_not_at_all(tmp_path):
    masks = np.zeros((2, 16, 16), bool)
    masks[1, 4:8, 4:8] = True
    folder = write_palette_masks(masks, tmp_path / "video" / "0", ["00000", "00005"])
    with Image.open(folder / "00005.png") as image:
        assert image.mode == "P" and np.asarray(image)[5, 5] == 1 and np.asarray(image).sum() == 16
    assert image.getpalette()[3:6] == [128, 0, 0]
    with pytest.raises(FileExistsError):
        write_palette_masks(masks, folder, ["a", "b"])
    with pytest.raises(ValueError, match="frame names"):
        write_palette_masks(masks, tmp_path / "other", ["only_one"])
    broken = [np.zeros((16, 16), bool), "not a mask"]
    with pytest.raises(Exception):
        write_palette_masks(np.array(broken, dtype=object), tmp_path / "partial", ["a", "b"])
    assert sorted(path.name for path in tmp_path.iterdir()) == ["video"]
    with pytest.raises(ValueError, match="Unsupported video format"):
        write_video(synthetic_frames(1), tmp_path / "x.avi")


# ----------------------------------------------------------------------------- standard processor kwargs


def test_num_frames_samples_uniformly_and_device_moves_the_outputs(processor):
    frames = np.stack(synthetic_frames(num_frames=6))
    sampled = processor(videos=frames, text="the square", num_frames=3)
    assert sampled["frame_indices"].tolist() == [[0, 2, 4]]
    expected = processor(videos=frames[[0, 2, 4]], text="the square")
    assert torch.equal(sampled["pixel_values"], expected["pixel_values"])
    # After frame_stride: frames 0, 2, 4 are kept, then 2 of them spread uniformly.
    strided = processor(videos=frames, text="the square", frame_stride=2, num_frames=2, do_sample_frames=True)
    assert strided["frame_indices"].tolist() == [[0, 2]]
    on_meta = processor(videos=frames, text="the square", device="meta")
    assert on_meta["pixel_values"].device.type == "meta" and on_meta["pixel_values"].shape[1] == 6


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"fps": 2}, "`fps` sampling is not supported"),
        ({"do_sample_frames": True}, "needs `num_frames`"),
        ({"do_sample_frames": False, "num_frames": 2}, "do_sample_frames=False"),
        ({"num_frames": 7}, "Cannot sample num_frames=7 frames from a video of 6"),
        ({"num_frames": 0}, "positive integer"),
        ({"return_metadata": True}, "not supported"),
    ],
)
def test_video_sampling_kwargs_it_cannot_honour_are_refused(processor, kwargs, message):
    with pytest.raises(ValueError, match=message):
        processor(videos=np.stack(synthetic_frames(num_frames=6)), text="the square", **kwargs)


def test_tokenizer_kwargs_reach_the_tokenizer(processor, caplog):
    frames = np.stack(synthetic_frames(num_frames=2))
    default = processor(videos=frames, text="the square")
    num_tokens = default["input_ids"].shape[1]
    padded = processor(videos=frames, text="the square", padding="max_length", max_length=num_tokens + 4)
    assert padded["input_ids"].shape == (1, num_tokens + 4)
    assert torch.equal(padded["input_ids"][:, :num_tokens], default["input_ids"])
    assert padded["attention_mask"].sum().item() == num_tokens
    assert (padded["input_ids"][0, num_tokens:] == processor.tokenizer.pad_token_id).all()
    with caplog.at_level(logging.WARNING):
        truncated = processor(videos=frames, text="the square", max_length=num_tokens - 1)
    assert truncated["input_ids"].shape == (1, num_tokens - 1) and "truncated" in caplog.text
    with pytest.raises(ValueError, match="exceeds the text encoder's limit"):
        processor(videos=frames, text="the square", max_length=processor.tokenizer.model_max_length + 1)


def test_post_processing_accepts_return_dict_false_tuples(processor):
    torch.manual_seed(0)
    model = randomize_weights(ReferFormerForReferringVideoObjectSegmentation(unit_test_config()).eval())
    inputs = processor(videos=np.stack(synthetic_frames(num_frames=2)), text="the square")
    with torch.no_grad():
        outputs = model(**inputs)
        tuple_outputs = model(**inputs, return_dict=False)
    sizes = (inputs["original_sizes"], inputs["resized_sizes"])
    expected = processor.post_process_referring_video_segmentation(outputs, *sizes)[0]
    result = processor.post_process_referring_video_segmentation(tuple_outputs, *sizes)[0]
    assert torch.equal(result["masks"], expected["masks"]) and torch.equal(result["boxes"], expected["boxes"])
    assert result["query_index"] == expected["query_index"]
    with pytest.raises(ValueError, match="return_dict=False tuple computed without labels"):
        processor.post_process_referring_video_segmentation((torch.tensor(1.0),) + tuple_outputs, *sizes)
