"""The synthetic referring-shapes generator: determinism, unambiguous expressions, masks that match the frames."""

import json

import numpy as np
import pytest
from PIL import Image
from scipy.ndimage import binary_erosion

from referformer.data import (
    ReferringVideoEvalTransform,
    ReferringVideoTrainTransform,
    describe_attributes,
    generate_referring_shapes,
    load_object_masks,
    load_ref_youtube_vos,
    matching_objects,
)
from referformer.data_synthetic import ATTRIBUTES, COLORS, SHAPES


GENERATOR_ARGS = {"num_videos": 5, "num_frames": 6, "height": 96, "width": 128}


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    root = tmp_path_factory.mktemp("shapes")
    return root, generate_referring_shapes(root, seed=7, **GENERATOR_ARGS)


def tree_bytes(root):
    return {path.relative_to(root).as_posix(): path.read_bytes() for path in sorted(root.rglob("*")) if path.is_file()}


def test_same_seed_same_bytes(shapes, tmp_path):
    root, metadata = shapes
    again = generate_referring_shapes(tmp_path / "again", seed=7, **GENERATOR_ARGS)
    assert again == metadata
    assert tree_bytes(tmp_path / "again") == tree_bytes(root)
    other = generate_referring_shapes(tmp_path / "other", seed=8, **GENERATOR_ARGS)
    assert tree_bytes(tmp_path / "other") != tree_bytes(root)
    assert other != metadata
    # Clip i depends only on (seed, i).
    fewer = generate_referring_shapes(tmp_path / "fewer", seed=7, **{**GENERATOR_ARGS, "num_videos": 2})
    assert fewer["videos"] == {key: metadata["videos"][key] for key in list(metadata["videos"])[:2]}


def test_layout_files(shapes):
    root, metadata = shapes
    assert len(metadata["videos"]) == 5
    meta = json.loads((root / "train" / "meta.json").read_text())
    expressions = json.loads((root / "meta_expressions" / "train" / "meta_expressions.json").read_text())
    for video_id, video in metadata["videos"].items():
        assert 2 <= len(video["objects"]) <= 4
        assert video["frames"] == [f"{5 * t:05d}" for t in range(6)]
        assert expressions["videos"][video_id]["frames"] == video["frames"]
        assert {obj_id: obj["category"] for obj_id, obj in meta["videos"][video_id]["objects"].items()} == {
            obj_id: obj["shape"] for obj_id, obj in video["objects"].items()
        }
        for exp_id, expression in video["expressions"].items():
            assert expressions["videos"][video_id]["expressions"][exp_id] == {
                "exp": expression["exp"],
                "obj_id": expression["obj_id"],
            }
        for name in video["frames"]:
            assert Image.open(root / "train" / "JPEGImages" / video_id / f"{name}.jpg").size == (128, 96)
            assert Image.open(root / "train" / "Annotations" / video_id / f"{name}.png").mode == "P"


def test_every_expression_refers_to_exactly_one_object(shapes):
    _, metadata = shapes
    backgrounds, phrasings = set(), set()
    for video in metadata["videos"].values():
        backgrounds.add(video["background"])
        objects = video["objects"]
        for obj in objects.values():
            assert obj["shape"] in SHAPES and tuple(obj["rgb"]) == COLORS[obj["color"]]
        for expression in video["expressions"].values():
            attributes = expression["attributes"]
            assert attributes and set(attributes) <= set(ATTRIBUTES)
            assert matching_objects(attributes, objects) == [expression["obj_id"]]
            assert expression["exp"] == describe_attributes(attributes)
            phrasings.add(tuple(sorted(attributes)))
        # Every object is referred to, and expressions of a clip are distinct.
        assert {e["obj_id"] for e in video["expressions"].values()} == set(objects)
        assert len({e["exp"] for e in video["expressions"].values()}) == len(video["expressions"])
    assert backgrounds == {"plain", "textured"}
    assert len(phrasings) > 5
    assert describe_attributes({"size": "big", "color": "blue", "shape": "square", "position": "left"}) == (
        "the big blue square on the left"
    )
    assert (
        describe_attributes({"color": "green", "shape": "triangle", "motion": "up"}) == "the green triangle moving up"
    )


def test_masks_agree_with_frames(shapes):
    root, metadata = shapes
    for video_id, video in metadata["videos"].items():
        for t, name in enumerate(video["frames"]):
            frame = np.asarray(Image.open(root / "train" / "JPEGImages" / video_id / f"{name}.jpg"), dtype=np.float32)
            labels = np.asarray(Image.open(root / "train" / "Annotations" / video_id / f"{name}.png"))
            assert set(np.unique(labels)) <= {0, *map(int, video["objects"])}
            background = frame[binary_erosion(labels == 0, iterations=2)]
            assert (background.max(-1) - background.min(-1)).max() < 30  # grey: no object colour
            for obj_id, obj in video["objects"].items():
                mask = labels == int(obj_id)
                assert mask.any(), f"{video_id}/{name}: object {obj_id} not visible"
                inner = binary_erosion(mask, iterations=1)
                if inner.any():
                    assert np.abs(frame[inner] - obj["rgb"]).max(-1).mean() < 12
                    assert np.abs(frame[inner] - obj["rgb"]).max() < 60
                # The mask lies where the object was drawn: around its recorded center.
                ys, xs = np.nonzero(mask)
                cx, cy = obj["centers"][t]
                assert abs(xs.mean() - cx) < obj["radius"] + 1 and abs(ys.mean() - cy) < obj["radius"] + 1


def test_generated_folder_loads_and_transforms(shapes, tmp_path):
    root, metadata = shapes
    dataset = load_ref_youtube_vos(root, "train")
    assert len(dataset) == sum(len(video["expressions"]) for video in metadata["videos"].values())
    for row in dataset.select(range(4)):
        video = metadata["videos"][row["video_id"]]
        expression = video["expressions"][row["exp_id"]]
        assert (row["expression"], row["obj_id"]) == (expression["exp"], expression["obj_id"])
        assert row["category"] == video["objects"][row["obj_id"]]["shape"]
        assert load_object_masks(row, range(6)).reshape(6, -1).any(1).all()

    row = next(row for row in dataset if "on the left" in row["expression"])
    sample = ReferringVideoTrainTransform(4, flip_prob=1.0, seed=0).transform_example(row)
    assert "on the right" in sample["expression"] and "on the left" not in sample["expression"]
    assert sample["pixel_values"].shape[:2] == (4, 3) and sample["labels"]["valid"].any()

    # A split with ground truth for evaluation.
    generate_referring_shapes(root, seed=9, split="valid", num_videos=2, num_frames=4, height=64, width=96)
    valid = load_ref_youtube_vos(root, "valid")
    assert set(valid["mask_type"]) == {"palette"}
    sample = valid.with_transform(ReferringVideoEvalTransform())[0]
    assert sample["pixel_values"].shape == (4, 3, 360, 540)
    assert sample["labels"]["masks"].shape == (4, 360, 540) and sample["labels"]["valid"].tolist() == [1, 1, 1, 1]
    with pytest.raises(FileExistsError, match="valid"):
        generate_referring_shapes(root, seed=9, split="valid", num_videos=1)


def test_expressions_name_only_the_allowed_attributes(tmp_path):
    allowed = ("size", "color", "shape", "position")
    metadata = generate_referring_shapes(tmp_path, seed=3, expression_attributes=allowed, **GENERATOR_ARGS)
    for video in metadata["videos"].values():
        # Objects differ in the allowed attributes alone, so each still has a unique description.
        assert len({tuple(obj[name] for name in allowed) for obj in video["objects"].values()}) == len(video["objects"])
        assert {expression["obj_id"] for expression in video["expressions"].values()} == set(video["objects"])
        for expression in video["expressions"].values():
            assert set(expression["attributes"]) <= set(allowed)
            assert "moving" not in expression["exp"] and "not moving" not in expression["exp"]
            assert matching_objects(expression["attributes"], video["objects"]) == [expression["obj_id"]]


def test_generator_argument_errors(tmp_path):
    with pytest.raises(ValueError, match="expression_attributes"):
        generate_referring_shapes(tmp_path, expression_attributes=("colour",))
    with pytest.raises(ValueError, match="split"):
        generate_referring_shapes(tmp_path, split="val")
    with pytest.raises(ValueError, match="two frames"):
        generate_referring_shapes(tmp_path, num_frames=1)
    with pytest.raises(ValueError, match="32x32"):
        generate_referring_shapes(tmp_path, height=16)
