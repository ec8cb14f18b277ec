"""Post-processing to nuclei, and the metrics: AJI by hand, PQ/F1 against torchmetrics."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
from torchmetrics.functional.detection import panoptic_quality

from ihcflow.data.synth import render_with_nuclei
from ihcflow.segmentation import metrics as M
from ihcflow.segmentation.instances import PostprocessConfig, summarize, to_annotation
from ihcflow.segmentation.labels import (
    IGNORE,
    NEGATIVE,
    POSITIVE,
    SEG_BACKGROUND,
    SEG_BOUNDARY,
    SEG_INTERIOR,
    Annotation,
    relabel,
    targets,
)
from ihcflow.segmentation.sample import nuclei_annotation


def _ann(instances: np.ndarray, positive: set[int] = frozenset()) -> Annotation:
    classes = np.full(int(instances.max()) + 1, NEGATIVE, np.uint8)
    classes[list(positive)] = POSITIVE
    classes[0] = 0
    return relabel(instances.astype(np.uint16), classes)


def _perfect_probs(ann: Annotation, boundary_px: int = 2) -> np.ndarray:
    """What a perfect network would output for ``ann`` (uint8 probabilities)."""
    seg, pos = targets(ann, boundary_px)
    probs = np.zeros((4, *seg.shape), np.uint8)
    for channel, value in enumerate((SEG_BACKGROUND, SEG_INTERIOR, SEG_BOUNDARY)):
        probs[channel][seg == value] = 255
    probs[3][pos == 1] = 255
    probs[3][pos == IGNORE] = 0
    return probs


def test_aji_by_hand() -> None:
    true = np.zeros((10, 10), np.uint16)
    true[0:4, 0:4] = 1  # 16 px
    true[6:10, 6:10] = 2  # 16 px, missed
    pred = np.zeros((10, 10), np.uint16)
    pred[0:4, 0:2] = 1  # 8 px inside true 1
    pred[0:2, 6:8] = 2  # 4 px false positive
    ov = M.overlaps(true, pred)
    # C = 8; U = |T1 u P1| + |T2| + |P2 unused| = 16 + 16 + 4
    assert M.aji(ov) == pytest.approx(8 / 36)
    pq, sq, f1, matched = M.panoptic(ov)
    assert matched == 0 and f1 == 0 and pq == 0  # IoU 0.5 is not > 0.5
    assert M.aji(M.overlaps(true, true)) == 1.0
    assert M.aji(M.overlaps(np.zeros_like(true), np.zeros_like(true))) is None


def _random_instances(seed: int, n: int, size: int = 96) -> np.ndarray:
    rng = np.random.default_rng(seed)
    inst = np.zeros((size, size), np.int32)
    for k in range(1, n + 1):
        c = rng.uniform(0, size, 2)
        cv2.ellipse(inst, (int(c[0]), int(c[1])), (int(rng.uniform(3, 9)), 5), 30.0, 0, 360, k, -1)
    return inst


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_pq_and_f1_match_torchmetrics(seed: int) -> None:
    true = _random_instances(seed, 25)
    pred = np.roll(_random_instances(seed, 25), 2, axis=1)
    pred[pred == 3] = 0  # a miss
    pred[_random_instances(seed + 10, 3) > 0] = 99  # and spurious ones
    pq, sq, f1, _ = M.panoptic(M.overlaps(true, pred))

    def panoptic_input(a: np.ndarray) -> torch.Tensor:
        t = torch.from_numpy(a.astype(np.int64))
        return torch.stack([(t > 0).long(), t], dim=-1)[None]

    ref = panoptic_quality(
        panoptic_input(pred),
        panoptic_input(true),
        things={1},
        stuffs={0},
        return_sq_and_rq=True,
        return_per_class=True,
    )
    nucleus = ref[0]  # rows: things, then stuffs
    assert (pq, sq, f1) == pytest.approx(tuple(nucleus.tolist()), abs=1e-6)


def test_pixel_dice_and_iou() -> None:
    true = np.zeros((4, 4), np.uint16)
    true[:2] = 1
    pred = np.zeros((4, 4), np.uint16)
    pred[:1] = 5
    assert M.pixel_scores(true, pred) == pytest.approx((2 * 4 / (8 + 4), 4 / 8))
    assert M.pixel_scores(np.zeros_like(true), np.zeros_like(true)) == (1.0, 1.0)


def test_a_perfect_network_recovers_touching_nuclei_and_their_classes() -> None:
    _, nuclei = render_with_nuclei("Ki-67", 0, patients=3, size=448)
    true = nuclei_annotation(nuclei, 448)
    pred = to_annotation(_perfect_probs(true), PostprocessConfig())
    scores = M.score_image(true, pred)
    assert scores["aji"] > 0.85 and scores["f1"] > 0.95 and scores["dice"] > 0.99
    # slivers of nuclei almost hidden under others fall below min_area_px
    assert true.count * 0.95 <= pred.count <= true.count
    assert scores["ki67_error"] < 0.02


def test_seeds_split_nuclei_that_share_a_boundary_band() -> None:
    inst = np.zeros((30, 50), np.uint16)
    inst[5:25, 5:25] = 1
    inst[5:25, 25:45] = 2  # touching along a whole side
    true = _ann(inst, positive={2})
    pred = to_annotation(_perfect_probs(true), PostprocessConfig())
    assert pred.count == 2
    assert M.aji(M.overlaps(true.instances, pred.instances)) > 0.9
    assert pred.classes[pred.instances[15, 35]] == POSITIVE
    assert pred.classes[pred.instances[15, 10]] == NEGATIVE
    # without the band, the two become one
    merged = _perfect_probs(true)
    merged[1] = np.maximum(merged[1], merged[2])
    merged[2] = 0
    assert to_annotation(merged, PostprocessConfig()).count == 1


def test_unseeded_regions_become_nuclei_and_debris_is_dropped() -> None:
    probs = np.zeros((4, 40, 40), np.uint8)
    probs[0] = 255
    probs[0, 5:15, 5:15] = 0  # nucleus pixels without any interior (seed)
    probs[2, 5:15, 5:15] = 255
    probs[0, 30:33, 30:33] = 0  # 9 px: debris
    probs[1, 30:33, 30:33] = 255
    pred = to_annotation(probs, PostprocessConfig(min_area_px=25))
    assert pred.count == 1 and (pred.instances[5:15, 5:15] == 1).all()
    assert summarize(pred, microns_per_pixel=0.5).as_dict() == {
        "nuclei": 1,
        "positive": 0,
        "ki67_index": 0.0,
        "mean_area_px": 100.0,
        "mean_area_um2": 25.0,
    }
    empty = summarize(
        to_annotation(
            np.zeros((4, 8, 8), np.uint8) + np.array([255, 0, 0, 0], np.uint8)[:, None, None],
            PostprocessConfig(),
        )
    )
    assert empty.nuclei == 0 and empty.ki67_index is None


def test_summary_over_images() -> None:
    a = _ann(_random_instances(0, 10), positive={1, 2})
    b = _ann(_random_instances(1, 10))
    rows = [M.score_image(a, a), M.score_image(b, _ann(np.zeros((96, 96), np.int32)))]
    out = M.summarize(rows)
    assert out["n_images"] == 2
    assert out["aji"] == pytest.approx(0.5) and out["dice"] == pytest.approx(0.5)
    assert out["ki67_error_max"] == pytest.approx(0.0)  # b: no positives, none found: 0 vs 0
    with pytest.raises(ValueError, match="0 images"):
        M.summarize([])


def test_config_is_checked() -> None:
    with pytest.raises(ValueError, match=r"postprocess.seed is 1.5"):
        PostprocessConfig(seed=1.5)
