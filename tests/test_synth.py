"""The synthetic generator: exact Karpathy format, determinism, unique descriptions, clean vocabulary."""

import hashlib
import itertools
import json
import random

import pytest
from PIL import Image

from data_prep.synth import generate
from data_prep.synth.captions import STYLES, captions_for
from data_prep.synth.generate import PROFILES, captions_per_image
from data_prep.synth.scenes import BACKGROUNDS, COLS, ROWS, sample_scene, scene_key
from mmd2v2_core.errors import DataError

KARPATHY_IMAGE_FIELDS = {"sentids", "filename", "imgid", "split", "sentences"}


def _tree_digest(root):
    h = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        h.update(str(path.relative_to(root)).encode())
        h.update(path.read_bytes())
    return h.hexdigest()


def _karpathy(domain_dir):
    return json.loads(next(domain_dir.glob("dataset_*.json")).read_text())


def test_same_seed_gives_byte_identical_output_whatever_the_worker_count(smoke_data, tmp_path):
    again = generate(tmp_path, "smoke", seed=0, workers=1)
    for domain, path in smoke_data.items():
        assert _tree_digest(again[domain]) == _tree_digest(path)


def test_another_seed_gives_other_data(smoke_data, tmp_path):
    other = generate(tmp_path, "smoke", seed=1, workers=2)
    assert _karpathy(other["synth-coco"]) != _karpathy(smoke_data["synth-coco"])


def test_karpathy_format_exactly(smoke_data):
    for domain, path in smoke_data.items():
        data = _karpathy(path)
        assert set(data) == {"images", "dataset"} and data["dataset"] == domain
        sentids = []
        for k, entry in enumerate(data["images"]):
            extra = {"filepath"} if domain == "synth-coco" else set()
            assert set(entry) == KARPATHY_IMAGE_FIELDS | extra | {"scene"}
            assert entry["imgid"] == k
            assert entry["sentids"] == [s["sentid"] for s in entry["sentences"]]
            for s in entry["sentences"]:
                assert set(s) == {"tokens", "raw", "imgid", "sentid"} and s["imgid"] == k
                assert s["tokens"] == [w for w in s["tokens"] if w.isalpha() and w.islower()]
                assert " ".join(s["tokens"]) in s["raw"].lower().replace(",", "").replace(":", "")
            sentids += entry["sentids"]
        assert sentids == list(range(len(sentids)))


def test_splits_sizes_and_domains(smoke_data):
    scale = PROFILES["smoke"]
    coco, flickr = _karpathy(smoke_data["synth-coco"]), _karpathy(smoke_data["synth-flickr"])
    for split, n in scale["synth-coco"].items():
        assert sum(e["split"] == split for e in coco["images"]) == n
    assert {e["split"] for e in flickr["images"]} == {"test"}  # never trained on
    assert "filepath" not in flickr["images"][0]  # Flickr30K keeps images in one folder
    img = Image.open(smoke_data["synth-flickr"] / "images" / flickr["images"][0]["filename"])
    assert img.size == (scale["image_size"],) * 2 and img.mode == "RGB"


def test_embedded_profile_has_the_benchmark_test_sizes():
    assert PROFILES["embedded"]["synth-coco"]["test"] == 5000
    assert PROFILES["embedded"]["synth-flickr"] == {"test": 1000}
    assert sum(captions_per_image(i) for i in range(5000)) == 25020  # COCO 5K has 25,010


def test_mostly_five_captions_some_six_or_seven(smoke_data):
    counts = [len(e["sentences"]) for e in _karpathy(smoke_data["synth-coco"])["images"] if e["split"] == "test"]
    assert set(counts) == {5, 6, 7}
    assert counts.count(5) > 0.95 * len(counts)


def test_descriptions_unique_and_every_caption_names_every_object(smoke_data):
    for path in smoke_data.values():
        data = _karpathy(path)
        keys = [scene_key(e["scene"]) for e in data["images"]]
        assert len(set(keys)) == len(keys)
        for e in data["images"]:
            texts = [s["raw"].lower() for s in e["sentences"]]
            assert len(set(texts)) == len(texts)
            for text in texts:
                for o in e["scene"]["objects"]:
                    assert o["color"] in text and o["shape"] in text


def test_all_caption_words_are_in_the_bert_vocabulary(smoke_data, tokenizer):
    captions = [s["raw"] for p in smoke_data.values() for e in _karpathy(p)["images"] for s in e["sentences"]]
    # Plus every phrasing option, so rare combinations are covered too.
    for style in STYLES.values():
        captions += [w for words in style.sizes.values() for w in words]
        captions += [p for r, c in itertools.product(ROWS, COLS) for p in style.positions(r, c)]
        captions += [b for bs in style.backgrounds.values() for b in bs]
        captions += [f.replace("{", " ").replace("}", " ") for f in style.frames + style.object_forms]
    ids = tokenizer(captions)["input_ids"]
    assert (ids == tokenizer.hf.unk_token_id).sum() == 0


def test_scene_sampling_covers_the_grammar():
    rng = random.Random(0)
    scenes = [sample_scene(rng) for _ in range(2000)]
    assert {s["background"] for s in scenes} == set(BACKGROUNDS)
    assert {len(s["objects"]) for s in scenes} == {1, 2, 3}
    for s in scenes:
        cells = [(o["row"], o["col"]) for o in s["objects"]]
        assert len(set(cells)) == len(cells)


def test_captions_vary_in_wording_and_order():
    scene = sample_scene(random.Random(3))
    caps = captions_for(scene, "coco", 40, random.Random(0))
    assert len(set(caps)) == 40
    assert len({c.split()[0] for c in caps}) >= 3  # different sentence starts


def test_rerun_reuses_and_refuses_other_parameters(smoke_data):
    out = smoke_data["synth-coco"].parent
    before = (smoke_data["synth-coco"] / "manifest.json").stat().st_mtime_ns
    generate(out, "smoke", seed=0)
    assert (smoke_data["synth-coco"] / "manifest.json").stat().st_mtime_ns == before
    with pytest.raises(DataError, match="other generation parameters"):
        generate(out, "smoke", seed=5)


def test_unknown_profile():
    with pytest.raises(DataError, match="unknown synthetic profile"):
        generate("/nonexistent", "huge")


def test_the_held_out_mat_reframes_the_scene_and_keeps_each_object_in_its_cell():
    """``mat`` (a held-out look, in no style): the scene drawn smaller inside a mat and frame, each object still in
    its own grid cell and in its colour, the same pixels for the same seed."""
    import numpy as np

    from data_prep.synth.render import HELD_OUT_TRAITS, MAT_SCALE, RGB, STYLE_TRAITS, render
    from data_prep.synth.scenes import COLS, ROWS

    assert "mat" in HELD_OUT_TRAITS and all("mat" not in traits for traits in STYLE_TRAITS.values())
    for row, col in ((r, c) for r in ROWS for c in COLS):
        scene = {"background": "night", "objects": [{"shape": "square", "color": "yellow", "size": "large",
                                                     "row": row, "col": col}]}
        for size in (64, 128):
            image = np.asarray(render(scene, size, ("mat",), (0, 1, 0, 5))).astype(np.float32)
            assert np.array_equal(image, np.asarray(render(scene, size, ("mat",), (0, 1, 0, 5))))
            plain = np.asarray(render(scene, size, (), (0, 1, 0, 5))).astype(np.float32)
            ys, xs = np.nonzero(np.linalg.norm(image - np.array(RGB["yellow"]), axis=-1) < 30)
            assert (int(3 * ys.mean() / size), int(3 * xs.mean() / size)) == (ROWS.index(row), COLS.index(col))
            area = (np.linalg.norm(plain - np.array(RGB["yellow"]), axis=-1) < 30).sum()
            assert 0.8 < len(ys) / (area * MAT_SCALE ** 2) < 1.25  # drawn at MAT_SCALE
            assert np.linalg.norm(image[0, 0] - plain[0, 0]) > 60  # the frame, not the night sky


def test_each_rendering_trait_changes_the_drawing_and_all_of_them_are_the_flickr_style():
    import numpy as np

    from data_prep.synth.render import STYLE_TRAITS, TRAITS, render

    scene = {"background": "grass", "objects": [{"shape": "star", "color": "red", "size": "large", "row": "middle",
                                                 "col": "center"}]}
    assert set(STYLE_TRAITS["flickr"]) == set(TRAITS)
    for trait in TRAITS:  # a trait may be too slight to show on one draw (a rotation by 0.01 rad): any of 4 seeds
        seeds = [(0, 1, 0, k) for k in range(4)]
        assert any(not np.array_equal(np.asarray(render(scene, 128, (trait,), seed)),
                                      np.asarray(render(scene, 128, STYLE_TRAITS["coco"], seed))) for seed in seeds), trait
    with pytest.raises(ValueError, match="sparkle"):
        render(scene, 64, ("outline", "sparkle"), (0, 1, 0, 3))
