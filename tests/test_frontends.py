"""Front ends: the frozen part's output (what a cache stores) gives exactly what pixels give; frozen parts stay
frozen; the stem is the packaged EfficientNet-Lite0's first stages; the cache is fingerprinted and resumable."""

import json

import pytest
import torch

from mmd2v2_core.data.tokenizer import CaptionTokenizer
from mmd2v2_core.student.frontends import StemFrontEnd
from mmd2v2_core.student.model import MultimodalStudent
from mmd2v2_core.student.presets import build_student, get_preset
from mmd2v2_core.teachers.packaged import load_efficientnet_lite0


def _pixels(n=3, size=64):
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("arch", ["mmd2v2_6", "smke"])
def test_cached_frontend_output_gives_the_same_embedding_as_pixels(arch):
    student, _ = build_student(get_preset(arch, "embedded"), init=False)
    student.eval()
    images = _pixels()
    with torch.no_grad():
        cached = student.image_embed.frozen(images)
        assert cached.shape == (3, 16, 112)  # 4×4 tokens of EfficientNet-Lite0's stage 4 at 64 px
        torch.testing.assert_close(student.encode_image(cached), student.encode_image(images))


def test_the_stem_is_frozen_and_keeps_its_batchnorm_statistics_in_training():
    student, report = build_student(get_preset("mmd2v2_6", "embedded"))
    assert "efficientnet-lite0 stages 0–4" in report["image"]
    stem = student.image_embed.stem
    assert not any(p.requires_grad for p in stem.parameters())
    assert student.image_embed.proj.weight.requires_grad
    student.train()
    assert not stem.training  # BatchNorm in eval mode: the ImageNet running statistics are used and kept
    lite0 = load_efficientnet_lite0()
    torch.testing.assert_close(stem[0].weight, lite0.conv_stem.weight)
    torch.testing.assert_close(stem[2 + 4][0].conv_pwl.weight, lite0.blocks[4][0].conv_pwl.weight)
    images = _pixels()  # ImageNet-normalised pixels → the stem's own [-1, 1] scaling
    raw = images * torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1) + torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    with torch.no_grad():
        expected = lite0.blocks[:5](lite0.bn1(lite0.conv_stem((raw - 0.5) / 0.5)))
        torch.testing.assert_close(student.image_embed.frozen(images), expected.flatten(2).transpose(1, 2),
                                   atol=1e-4, rtol=1e-3)  # the pixel rescaling is one fused affine map


def test_text_frontend_uses_minilm_word_embeddings_frozen_and_projects_them():
    from mmd2v2_core.teachers.packaged import load_minilm

    student, report = build_student(get_preset("mmd2v2_6", "embedded"))
    text = student.text_embed
    assert text.word.weight.shape == (30522, 384) and not text.word.weight.requires_grad
    assert torch.equal(text.word.weight, load_minilm().embeddings.word_embeddings.weight)
    assert text.proj.weight.shape == (128, 384) and text.proj.weight.requires_grad
    assert report["text"].startswith("minilm embeddings")


def test_patch_frontend_trains_from_pixels_and_refuses_cached_input_then():
    student = MultimodalStudent(get_preset("mmd2v2_6", "minilm").config)  # random patches, trained from pixels
    assert not student.image_embed.cacheable
    with pytest.raises(ValueError, match="trains from the pixels"):
        student.encode_image(torch.randn(2, 65, 384))


def test_stem_frontend_alone():
    cfg = get_preset("mmd2v2_6", "embedded").config
    front = StemFrontEnd(cfg)
    assert front(_pixels(2)).shape == (2, 17, cfg.width)


def test_frontend_cache_is_built_once_fingerprinted_and_trains_the_same_student(smoke_data, tmp_path):
    from mmd2v2_core.config import load_config
    from mmd2v2_core.data.datasets import RetrievalSplit
    from mmd2v2_core.eval.embed import embed_split, student_inputs
    from mmd2v2_core.student.frontend_cache import CachedFrontEnd
    from mmd2v2_core.teachers.cache import build_cache
    from mmd2v2_core.teachers.inspect import preprocess_of
    from mmd2v2_core.teachers.registry import create_teacher
    from mmd2v2_core.train.loop import train

    data = smoke_data["synth-coco"]
    student, _ = build_student(get_preset("mmd2v2_6", "smoke"))
    stats = student.image_embed.stem[1].running_mean.clone()
    source = CachedFrontEnd(student, tmp_path / "frontend")
    cache = source.cache(data, "val")
    assert torch.equal(student.image_embed.stem[1].running_mean, stats)  # frozen means frozen: BatchNorm too
    assert cache.meta["dim"] == 4 * 112 and cache.meta["fingerprint"]["frontend"].startswith("efficientnet-lite0")
    stamp = {p: p.stat().st_mtime_ns for p in (tmp_path / "frontend").rglob("*.npy")}
    split = RetrievalSplit.from_index(data, "val")
    transform, tokenizer = student_inputs(student, "packaged-minilm")
    cached = embed_split(student, split, source, tokenizer)
    pixels = embed_split(student, split, transform, tokenizer)
    agreement = (cached.image * pixels.image).sum(-1)  # cosine: both unit-norm; the cache stores fp16
    assert agreement.min() > 0.999, agreement.min()
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "frontend").rglob("*.npy")} == stamp  # reused, not rebuilt

    teacher = create_teacher("efficientnet-lite0", tiny=True)
    build_cache(teacher, "pooled", data, "train", tmp_path / "targets", preprocess_of(teacher, 32))
    cfg = load_config("smoke", [f"data.root={data}", f"run.out_dir={tmp_path / 'run'}", "optim.steps=20",
                                f"teacher.cache={tmp_path / 'targets'}", f"student.frontend_cache={tmp_path / 'frontend'}"])
    result = train(cfg)
    assert result.step == 20
    from mmd2v2_core.cli import main

    main(["eval", "retrieval", "--checkpoint", str(tmp_path / "run" / "checkpoints" / "step_0000020"), "--data",
          str(data), "--split", "val", "--frontend-cache", str(tmp_path / "frontend"), "--out", str(tmp_path / "r.json")])
    scored = json.loads((tmp_path / "r.json").read_text())["metrics"]["mean"]
    assert scored == pytest.approx(result.val_history[-1]["mean"], abs=1e-6)  # the same cached rows as validation
    online = load_config("smoke", [f"data.root={data}", f"run.out_dir={tmp_path / 'online'}",
                                   f"student.frontend_cache={tmp_path / 'frontend'}"])
    with pytest.raises(Exception, match="needs the teacher's targets from teacher.cache"):
        train(online)


def test_rendering_views_are_deterministic_and_change_rendering_only(smoke_data):
    import numpy as np

    from mmd2v2_core.data.images import open_rgb
    from mmd2v2_core.data.index import read_split
    from mmd2v2_core.data.rendering import foreground_mask, render_augment

    record = read_split(smoke_data["synth-coco"], "train")[0]
    pixels = torch.from_numpy(np.array(open_rgb(record.path))).permute(2, 0, 1)
    a = render_augment(pixels, torch.Generator().manual_seed(3), p=1.0)
    b = render_augment(pixels, torch.Generator().manual_seed(3), p=1.0)
    assert torch.equal(a, b) and a.dtype == torch.uint8 and a.shape == pixels.shape
    assert not torch.equal(a, pixels)
    assert torch.equal(render_augment(pixels, torch.Generator().manual_seed(3), p=0.0), pixels)
    assert foreground_mask(pixels.float()).sum() > 0  # the scene's objects are found


def test_cached_pairs_draw_views_reproducibly(smoke_data, tmp_path):
    from mmd2v2_core.data.index import read_split
    from mmd2v2_core.student.frontend_cache import CachedFrontEnd
    from mmd2v2_core.train.data import CachedPairs

    data = smoke_data["synth-coco"]
    student, _ = build_student(get_preset("mmd2v2_6", "smoke"))
    source = CachedFrontEnd(student, tmp_path, num_workers=1)
    views = [source.cache(data, "train", v) for v in range(3)]
    assert not torch.equal(views[0].all(), views[1].all())
    records = read_split(data, "train")
    tokenizer = CaptionTokenizer(max_length=student.cfg.max_text_len)
    pairs = CachedPairs(records, views, student.image_embed.token_dim, tokenizer, seed=0)
    drawn = pairs.batch([(0, position, 0) for position in range(12)])["images"]
    assert torch.equal(drawn[5], pairs.batch([(0, 5, 0)])["images"][0])
    assert len({tuple(t.flatten()[:4].tolist()) for t in drawn}) > 1  # several views of the same image
    # a batch is what the per-item path gave: each pair's view row of its image, its caption tokenised
    keys = [(1, position, index) for position, index in enumerate((3, 0, 7, 3, 11))]
    batch = pairs.batch(keys)
    captions = [c for r in records for c in r.captions]
    image_ids = [r.image_id for r in records for _ in r.captions]
    assert torch.equal(batch["image_id"], torch.tensor([image_ids[k[2]] for k in keys]))
    for row, (epoch, position, index) in enumerate(keys):
        view = views[pairs.view_of(epoch, position)]
        assert torch.equal(batch["images"][row].flatten(), view.lookup([image_ids[index]])[0])
    expected = tokenizer([captions[k[2]] for k in keys])
    assert torch.equal(batch["input_ids"], expected["input_ids"])
    assert torch.equal(batch["attention_mask"], expected["attention_mask"])


def test_hard_negatives_join_the_itc_of_cached_pairs(smoke_data, tmp_path):
    """NegCLIP-style ITC (loss.hard_negatives): each pair's image row also scores a negative caption of its own scene,
    so the first step's ITC is higher than without, on the same initialisation and batch."""
    from mmd2v2_core.config import load_config
    from mmd2v2_core.teachers.cache import build_cache
    from mmd2v2_core.teachers.inspect import preprocess_of
    from mmd2v2_core.teachers.registry import create_teacher
    from mmd2v2_core.train.loop import train

    data = smoke_data["synth-coco"]
    teacher = create_teacher("efficientnet-lite0", tiny=True)
    build_cache(teacher, "pooled", data, "train", tmp_path / "targets", preprocess_of(teacher, 32))
    first_itc = {}
    for negatives in (False, True):
        out = tmp_path / f"run-{negatives}"
        cfg = load_config("smoke", [f"data.root={data}", f"run.out_dir={out}", "optim.steps=2", "run.log_every=1",
                                    "run.val_every=0", "loss.itc_weight=1.0", f"loss.hard_negatives={negatives}",
                                    f"teacher.cache={tmp_path / 'targets'}",
                                    f"student.frontend_cache={tmp_path / 'frontend'}"])
        train(cfg)
        rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        first_itc[negatives] = next(r["itc"] for r in rows if r.get("kind") == "train")
    assert first_itc[True] > first_itc[False] + 0.05, first_itc
    with pytest.raises(Exception, match="loss.hard_negatives needs loss.itc_weight > 0 and student.frontend_cache"):
        load_config("smoke", [f"data.root={data}", "loss.hard_negatives=true"])
