"""The trivial baseline row: thumbnails + bag of words + closed-form CCA, fitted on train, far above chance."""

from mmd2v2_core.data.datasets import RetrievalSplit
from mmd2v2_core.eval.baseline import fit_cca


def test_cca_baseline_is_far_above_chance_on_the_training_domain(smoke_data):
    data = smoke_data["synth-coco"]
    baseline = fit_cca(RetrievalSplit.from_index(data, "train"))
    test = RetrievalSplit.from_index(data, "test")
    metrics = baseline.evaluate(test)
    chance = 100 / len(test.records)
    assert metrics["i2t_r1"] > 5 * chance and metrics["t2i_r1"] > 5 * chance
    shuffled = baseline.embed_texts(test.captions[::-1])  # captions that no longer belong to their images
    assert baseline.embed_images(test.records).shape[1] == shuffled.shape[1]
