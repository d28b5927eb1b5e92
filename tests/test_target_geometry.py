"""The share of a target's variance each scene attribute explains."""

import pytest
import torch

from mmd2v2_core.teachers.geometry import ATTRIBUTES, attribute_shares, explained_variance, scene_features


def _scenes(n=400, seed=0):
    g = torch.Generator().manual_seed(seed)
    backgrounds, shapes, colors = ["sand", "grass", "sky"], ["star", "cross", "circle"], ["red", "blue"]
    scenes = []
    for _ in range(n):
        objects = [{"shape": shapes[int(torch.randint(3, (1,), generator=g))],
                    "color": colors[int(torch.randint(2, (1,), generator=g))], "size": "large", "position": "left"}
                   for _ in range(int(torch.randint(1, 4, (1,), generator=g)))]
        scenes.append({"background": backgrounds[int(torch.randint(3, (1,), generator=g))], "objects": objects})
    return scenes


def test_indicator_features_one_hot_and_object_counts():
    scenes = [{"background": "sky", "objects": [{"shape": "star", "color": "red", "size": "small", "position": "left"},
                                                {"shape": "star", "color": "blue", "size": "small", "position": "top"}]},
              {"background": "sand", "objects": [{"shape": "cross", "color": "red", "size": "large", "position": "left"}]}]
    assert scene_features(scenes, "background").tolist() == [[0, 1], [1, 0]]  # sand, sky
    assert scene_features(scenes, "count").tolist() == [[0, 1], [1, 0]]  # "1", "2"
    assert scene_features(scenes, "shape").tolist() == [[0, 2], [1, 0]]  # cross, star
    with pytest.raises(ValueError, match="unknown scene attribute"):
        scene_features(scenes, "texture")


def test_a_target_made_of_the_background_is_explained_by_it_and_not_by_the_rest():
    scenes = _scenes()
    torch.manual_seed(0)
    codes = torch.randn(3, 32)
    target = scene_features(scenes, "background").float() @ codes + 0.1 * torch.randn(len(scenes), 32)
    shares = attribute_shares(target, scenes)
    assert set(shares) == set(ATTRIBUTES)
    assert shares["background"] > 0.95
    assert max(v for k, v in shares.items() if k != "background") < 0.1
    noise = attribute_shares(torch.randn(len(scenes), 32), scenes)
    assert max(noise.values()) < 0.1  # few indicator columns over 400 rows: little overfitting


def test_explained_variance_is_exact_on_a_linear_target():
    x = torch.eye(4, dtype=torch.float64).repeat(5, 1)
    assert explained_variance(x @ torch.randn(4, 6, dtype=torch.float64), x) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="targets but"):
        attribute_shares(torch.zeros(3, 2), _scenes(2))
