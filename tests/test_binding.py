"""Hard negatives from the scene graphs, and SugarCrepe's image–caption selection: the negatives change exactly what
their kind says and nothing else, a swap is the positive's words reordered, the kit's scorer reads SugarCrepe's
format and agrees with CLIP_benchmark's on a partly trained student, and bad sets are named."""

from __future__ import annotations

import difflib
import json
import random
import shutil
from collections import Counter

import numpy as np
import pytest
import torch

from data_prep.synth.captions import COUNT_WORDS, NOUNS, RELATION_PHRASES, STYLES, caption, draw
from data_prep.synth.negatives import KIND_TASK, KINDS, hard_negative, negative
from data_prep.synth.scenes import COLORS, HIDDEN_ON, SHAPES, SIZES, relation, sample_scene, scene_key
from mmd2v2_core.cli import main
from mmd2v2_core.data.index import read_split
from mmd2v2_core.eval.binding import SUGARCREPE_TASKS, read_binding_set, selection_scores

IDENTITY = ("shape", "color", "size")


def _objects(scene: dict) -> list[tuple]:
    return [(o["shape"], o["color"], o["size"], o["row"], o["col"]) for o in scene["objects"]]


def _words(text: str) -> list[str]:
    return text.lower().replace(",", " ").replace(".", " ").replace(":", " ").split()


def _article(word: str) -> str:
    return "a" if word == "an" else word


def _changeable_words(style: str) -> set[str]:
    """Words a negative may change: attribute values and their synonyms, position and relation phrases, object counts,
    articles and the joins between object phrases. Never the frame or the background's phrase."""
    s = STYLES[style]
    words = {*COLORS, *SHAPES, *COUNT_WORDS.values(), *NOUNS, *(n + "s" for n in NOUNS), "a", "an", "and", "that",
             "is", "the"}
    words |= {w for synonyms in s.sizes.values() for w in synonyms}
    words |= {w for r in ("top", "middle", "bottom") for c in ("left", "center", "right")
              for phrase in s.positions(r, c) for w in phrase.split()}
    words |= {w for phrases in RELATION_PHRASES.values() for phrase in phrases for w in phrase.split()}
    return words


def _check_change(kind: str, scene: dict, changed: dict) -> None:
    """The negative scene differs from the scene in exactly what ``kind`` changes, and the generator could draw it."""
    before, after = _objects(scene), _objects(changed)
    assert scene_key({**changed, "objects": sorted(changed["objects"], key=lambda o: (o["row"], o["col"]))}) != \
        scene_key({**scene, "objects": sorted(scene["objects"], key=lambda o: (o["row"], o["col"]))})
    assert len({(o["row"], o["col"]) for o in changed["objects"]}) == len(after) <= 3
    assert not {o["color"] for o in changed["objects"]} & HIDDEN_ON[changed["background"]]
    assert changed["background"] == scene["background"]
    for rel in changed["relations"]:
        assert rel["relation"] == relation(changed["objects"][rel["subject"]], changed["objects"][rel["object"]])
    if kind == "add_obj":
        assert after[:-1] == before and len(scene["objects"]) <= 2
        return
    differing = [i for i, (a, b) in enumerate(zip(before, after)) if a != b]
    key = {"color": (1,), "shape": (0,), "size": (2,), "position": (3, 4), "rel": (3, 4)}[kind.split("_", 1)[1]]
    for i in range(len(before)):  # nothing but the kind's attribute changes
        assert [v for k, v in enumerate(before[i]) if k not in key] == [v for k, v in enumerate(after[i]) if k not in key]
    if kind.startswith("swap_") or kind == "replace_rel":
        assert len(differing) == 2
        i, j = differing
        assert [before[i][k] for k in key] == [after[j][k] for k in key] and \
            [before[j][k] for k in key] == [after[i][k] for k in key]
    else:
        assert len(differing) == 1
        if kind == "replace_position":
            assert after[differing[0]][3:] not in {o[3:] for o in before}
        else:
            assert after[differing[0]][key[0]] not in {o[key[0]] for o in before}


@pytest.mark.parametrize("style", ["coco", "flickr"])
def test_each_kind_changes_its_attribute_and_only_the_words_that_name_it(style):
    rng = random.Random(7)
    made = Counter()
    allowed = _changeable_words(style)
    for n in range(600):
        scene = sample_scene(rng)
        for kind in KINDS:
            seed = f"{n}/{kind}"
            pair = hard_negative(scene, style, kind, seed)
            draws_rng = random.Random(seed)
            if pair is None:
                continue
            made[kind] += 1
            positive, neg = pair
            assert positive != neg
            # the positive is a caption the generator itself would write, with a frame of its style
            frames = [f for f in STYLES[style].frames if ("{rel}" in f) == (kind == "replace_rel")] \
                if kind == "replace_rel" or kind.startswith("swap_") else STYLES[style].frames
            assert positive == caption(scene, style, draws_rng, draws_rng.choice(frames))
            # the negative's scene: exactly the kind's change (replayed with the same seed)
            rng2 = random.Random(seed)
            draws = draw(scene, style, rng2, rng2.choice(frames))
            changed, _ = negative(scene, kind, style, draws, rng2)
            _check_change(kind, scene, changed)
            a, b = _words(positive), _words(neg)
            if kind.startswith("swap_"):  # a bag of words sees one caption twice (an article agrees with its word)
                assert Counter(map(_article, a)) == Counter(map(_article, b)), (positive, neg)
            for tag, i1, i2, j1, j2 in difflib.SequenceMatcher(a=a, b=b, autojunk=False).get_opcodes():
                if tag != "equal":
                    assert set(a[i1:i2] + b[j1:j2]) <= allowed, (kind, positive, neg)
    assert all(made[kind] > 100 for kind in KINDS), made


def test_selection_counts_a_tie_half_and_groups_by_task_and_kind(tmp_path):
    (tmp_path / "val2017").mkdir()
    for name in ("a.jpg", "b.jpg"):
        (tmp_path / "val2017" / name).write_bytes(b"")
    entries = {"3": {"filename": "a.jpg", "caption": "x", "negative_caption": "y", "kind": "swap_color"},
               "10": {"filename": "b.jpg", "caption": "x", "negative_caption": "y", "kind": "swap_size"},
               "11": {"filename": "a.jpg", "caption": "x", "negative_caption": "y", "kind": "swap_size"}}
    (tmp_path / "swap_att.json").write_text(json.dumps(entries))
    items = read_binding_set(tmp_path)
    assert len(items) == 3 and len(items.split.records) == 2 and items.image_of.tolist() == [0, 1, 0]
    image = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    # captions: 3 positives, then 3 negatives; item 0 right, item 1 wrong, item 2 a tie
    text = torch.tensor([[1.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.0, 1.0], [0.0, 1.0], [1.0, 1.0]])
    scores = selection_scores(image, text, items)
    assert scores["all"] == {"items": 3, "accuracy": pytest.approx(100 * 1.5 / 3), "ties": 1}
    assert scores["by_task"]["swap_att"]["items"] == 3
    assert scores["by_kind"]["swap_color"]["accuracy"] == 100
    assert scores["by_kind"]["swap_size"] == {"items": 2, "accuracy": 25.0, "ties": 1}


def test_the_kit_and_clip_benchmark_score_a_student_alike_on_synthetic_sets(smoke_data, smoke_checkpoint, tmp_path,
                                                                           capsys):
    pytest.importorskip("clip_benchmark")
    out = tmp_path / "binding"
    assert main(["data", "binding", "--data", str(smoke_data["synth-coco"]), "--out", str(out), "--images", "80"]) == 0
    tasks = sorted(p.stem for p in out.glob("*.json") if p.stem in SUGARCREPE_TASKS)
    assert tasks == sorted(set(KIND_TASK.values()))  # SugarCrepe's names; add_att has no synthetic counterpart
    for task in tasks:
        for entry in json.loads((out / f"{task}.json").read_text()).values():
            assert set(entry) == {"filename", "caption", "negative_caption", "kind", "image_id"}
            assert (out / "val2017" / entry["filename"]).is_file() and KIND_TASK[entry["kind"]] == task
    items = read_binding_set(out)  # the split's own image ids: what is cached for the split serves the set
    test = {r.image_id: r.path for r in read_split(smoke_data["synth-coco"], "test")}
    assert items.split.index_dir == smoke_data["synth-coco"].resolve() and items.split.split == "test"
    assert all(test[r.image_id].resolve() == r.path.resolve() for r in items.split.records)
    assert len(items.split.records) == 80
    assert main(["eval", "binding", "--checkpoint", str(smoke_checkpoint), "--sugarcrepe", str(out),
                 "--out", str(tmp_path / "kit.json")]) == 0
    kit = json.loads((tmp_path / "kit.json").read_text())
    assert "swap_att" in capsys.readouterr().out
    accuracies = [s["accuracy"] for s in kit["model"]["by_task"].values()]
    assert max(accuracies) > min(accuracies)  # a student whose scores can differ between scorers
    for task in tasks:
        assert main(["eval", "clip-benchmark", "--checkpoint", str(smoke_checkpoint), "--dataset",
                     f"sugar_crepe/{task}", "--dataset-root", str(out), "--out", str(tmp_path / f"{task}.json")]) == 0
        theirs = json.loads((tmp_path / f"{task}.json").read_text())["metrics"]
        mine = kit["model"]["by_task"][task]
        # CLIP_benchmark's argmax picks the caption on a tie: it counts a tie whole where the kit counts half
        correct = round(mine["accuracy"] * mine["items"] / 100 - 0.5 * mine["ties"])
        assert theirs["acc"] == pytest.approx((correct + mine["ties"]) / mine["items"], abs=1e-6), task


def test_sugarcrepe_own_files_are_read_as_they_are(smoke_data, smoke_checkpoint, tmp_path, capsys):
    """SugarCrepe's release: 7 task JSONs with non-contiguous string ids, no kind field, COCO val2017 file names."""
    root = tmp_path / "sugar_crepe"
    (root / "val2017").mkdir(parents=True)
    photos = sorted((smoke_data["synth-coco"] / "images" / "test").glob("*.jpg"))[:4]
    names = [f"{139 + 146 * i:012d}.jpg" for i in range(len(photos))]
    for photo, name in zip(photos, names):
        shutil.copy(photo, root / "val2017" / name)
    words = ("red", "blue", "green", "white")
    for t, task in enumerate(("add_att", "add_obj", "replace_att", "replace_obj", "replace_rel", "swap_att",
                              "swap_obj")):
        (root / f"{task}.json").write_text(json.dumps({str(7 * t + 3 * i): {
            "filename": name, "caption": f"a {words[i]} circle on the grass",
            "negative_caption": f"a {words[(i + 1) % 4]} circle on the grass"} for i, name in enumerate(names)}))
    assert main(["eval", "binding", "--checkpoint", str(smoke_checkpoint), "--sugarcrepe", str(root),
                 "--out", str(tmp_path / "r.json")]) == 0
    result = json.loads((tmp_path / "r.json").read_text())
    assert result["items"] == 28 and result["images"] == 4
    assert list(result["model"]["by_task"]) == list(result["model"]["by_kind"]) and len(result["model"]["by_task"]) == 7
    assert all(0 <= s["accuracy"] <= 100 for s in result["blind"]["by_task"].values())


@pytest.mark.parametrize("damage, named", [
    ("no_files", "no SugarCrepe task file"),
    ("not_json", "swap_att.json: not a SugarCrepe JSON"),
    ("a_list", "swap_att.json: not a SugarCrepe JSON (an object of id → entry expected, got list)"),
    ("no_negative", "swap_att.json: entry '5': field 'negative_caption' is missing"),
    ("empty_caption", "swap_att.json: entry '5': field 'caption' is missing or not a non-empty string"),
    ("missing_image", "swap_att.json: entry '5': image"),
    ("no_images_folder", "val2017: the images folder is missing"),
])
def test_a_bad_set_is_one_error_naming_its_file_and_entry(smoke_checkpoint, tmp_path, capsys, damage, named):
    root = tmp_path / "set"
    (root / "val2017").mkdir(parents=True)
    (root / "val2017" / "a.jpg").write_bytes(b"")
    entry = {"filename": "a.jpg", "caption": "a red circle", "negative_caption": "a blue circle"}
    content = {"5": entry}
    if damage == "no_negative":
        content = {"5": {k: v for k, v in entry.items() if k != "negative_caption"}}
    elif damage == "empty_caption":
        content = {"5": {**entry, "caption": "  "}}
    elif damage == "missing_image":
        content = {"5": {**entry, "filename": "gone.jpg"}}
    elif damage == "a_list":
        content = [entry]
    if damage == "no_images_folder":
        shutil.rmtree(root / "val2017")
    if damage == "not_json":
        (root / "swap_att.json").write_text("{'5': ")
    elif damage != "no_files":
        (root / "swap_att.json").write_text(json.dumps(content))
    assert main(["eval", "binding", "--checkpoint", str(smoke_checkpoint), "--sugarcrepe", str(root),
                 "--out", str(tmp_path / "r.json")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and named in err[0], err
    assert not (tmp_path / "r.json").exists()


def test_hard_negatives_need_scene_graphs_and_a_phrasing(smoke_data, tmp_path, capsys):
    assert main(["data", "binding", "--data", str(smoke_data["synth-coco"]), "--out", str(tmp_path / "a"),
                 "--split", "nope"]) == 2
    assert "no split 'nope'" in capsys.readouterr().err
    # the same scenes in the other phrasing
    assert main(["data", "binding", "--data", str(smoke_data["synth-coco"]), "--out", str(tmp_path / "b"),
                 "--images", "10", "--style", "flickr"]) == 0
    captions = [e["caption"] for task in SUGARCREPE_TASKS if (tmp_path / "b" / f"{task}.json").is_file()
                for e in json.loads((tmp_path / "b" / f"{task}.json").read_text()).values()]
    flickr_only = {w for f in STYLES["flickr"].frames for w in f.split() if "{" not in w} - \
        {w for f in STYLES["coco"].frames for w in f.split()}
    assert any(set(_words(c)) & flickr_only for c in captions)
    assert np.mean([len(c) for c in captions]) > 20


@pytest.mark.parametrize("damage, named", [
    (None, None),
    ("no_json", "lacks swap_obj.json; put SugarCrepe's task JSONs"),
    ("no_images", "lacks val2017/; put SugarCrepe's task JSONs"),
    ("image_gone", "add_att.json: entry '11': image"),
    ("truncated", "add_att.json: not a SugarCrepe JSON"),
    ("no_caption", "swap_att.json: entry '26'"),
])
def test_the_real_study_names_what_its_sugarcrepe_folder_lacks_before_anything_runs(tmp_path, damage, named):
    """`mmd2v2 study --profile real --sugarcrepe DIR`: the preflight reads the whole set, and a missing file, image or
    field is one line naming it (with where to download SugarCrepe and COCO val2017)."""
    from real_fixture import write_sugarcrepe

    from mmd2v2_core.preflight import missing_data
    from mmd2v2_core.study import Study

    folder = write_sugarcrepe(tmp_path / "sugar-crepe")
    if damage == "no_json":
        (folder / "swap_obj.json").unlink()
    elif damage == "no_images":
        shutil.rmtree(folder / "val2017")
    elif damage == "image_gone":
        name = json.loads((folder / "replace_rel.json").read_text())["23"]["filename"]
        (folder / "val2017" / name).unlink()
    elif damage == "truncated":
        (folder / "add_att.json").write_text((folder / "add_att.json").read_text()[:40])
    elif damage == "no_caption":
        entries = json.loads((folder / "swap_att.json").read_text())
        del entries["26"]["caption"]
        (folder / "swap_att.json").write_text(json.dumps(entries))
    study = Study("real", tmp_path / "run", sugarcrepe_dir=folder)
    lines = [line for line in missing_data(study) if line.startswith("data sugarcrepe:")]
    if named is None:
        assert lines == [] and len(read_binding_set(folder)) == 7 * 8
    else:
        assert len(lines) == 1 and named in lines[0], lines


def test_sugarcrepe_is_a_real_profile_test_set(tmp_path):
    from mmd2v2_core.errors import ConfigError
    from mmd2v2_core.study import Study

    with pytest.raises(ConfigError, match="--sugarcrepe is a real-profile test set"):
        Study("smoke", tmp_path / "run", sugarcrepe_dir=tmp_path)
