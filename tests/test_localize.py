"""Localization post-processing on hand-made arrays: decode, NMS, letterbox mapping, main box."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from service.localize import (
    Detections,
    LocalizerConfig,
    box_iou,
    image_to_input_boxes,
    input_to_image_boxes,
    merge_flipped,
    nms,
    postprocess,
    select_main_box,
)
from service.preprocess import PreprocessConfig, crop_box, crop_rect, resize_to_input

STRIDE = 8
S = 64  # input size → 8 x 8 cells
MODEL_CFG = {"stride": STRIDE, "input_size": S}


def maps_with(objects: list[tuple[int, int, float, tuple[float, float, float, float]]]):
    """Heatmap/ltrb (batch 1) with a peak at cell (row, col) of score, box ltrb in strides."""
    heat = np.zeros((1, 1, S // STRIDE, S // STRIDE), np.float32)
    ltrb = np.zeros((1, 4, S // STRIDE, S // STRIDE), np.float32)
    for row, col, score, d in objects:
        heat[0, 0, row, col] = score
        ltrb[0, :, row, col] = d
    return {"heatmap": heat, "ltrb": ltrb}


def test_nms_suppresses_overlaps_and_keeps_order_on_ties():
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30], [0, 0, 10, 10]], float)
    scores = np.array([0.9, 0.8, 0.9, 0.9])
    keep = nms(boxes, scores, 0.5)
    # equal scores keep input order: 0 first, then 2; 3 duplicates 0; 1 overlaps 0
    assert keep.tolist() == [0, 2]
    assert nms(np.zeros((0, 4)), np.zeros(0), 0.5).tolist() == []
    assert nms(boxes, scores, 1.0).tolist() == [0, 2, 3, 1]  # nothing above IoU 1


def test_box_iou_values_and_degenerate_boxes():
    a = np.array([[0, 0, 10, 10]], float)
    b = np.array([[5, 0, 15, 10], [0, 0, 10, 10], [3, 3, 3, 8]], float)
    np.testing.assert_allclose(box_iou(a, b)[0], [50 / 150, 1.0, 0.0])
    assert box_iou(np.zeros((0, 4)), b).shape == (0, 3)


def test_decode_one_peak_square_image_maps_back_exactly():
    # peak at cell (3, 4): centre (36, 28) in input px; l,t,r,b = 2,1,1,3 strides
    out = maps_with([(3, 4, 0.9, (2, 1, 1, 3))])
    dets = postprocess(out, image_size=(128, 128), preprocess=PreprocessConfig(input_size=S),
                       model_cfg=MODEL_CFG)
    assert len(dets) == 1
    np.testing.assert_allclose(dets.boxes[0], np.array([20, 20, 44, 52]) * 2)
    np.testing.assert_allclose(dets.scores, [0.9])


def mirrored(out):
    """What a detector that sees the mirrored input gives: cells mirrored, l and r swapped."""
    return {"heatmap": out["heatmap"][..., ::-1],
            "ltrb": out["ltrb"][:, [2, 1, 0, 3]][..., ::-1]}


def test_flip_merge_of_a_consistent_detector_decodes_the_same_box():
    out = maps_with([(3, 4, 0.9, (2, 1, 1, 3))])
    pair = {k: np.concatenate([out[k], mirrored(out)[k]]) for k in out}
    merged = merge_flipped(pair, STRIDE, S)
    np.testing.assert_allclose(merged["heatmap"], out["heatmap"])
    np.testing.assert_allclose(merged["ltrb"], out["ltrb"])
    kw = {"image_size": (128, 96), "preprocess": PreprocessConfig(input_size=S),
          "model_cfg": MODEL_CFG}
    np.testing.assert_allclose(postprocess(merged, **kw).boxes, postprocess(out, **kw).boxes)


def test_flip_merge_averages_the_views_and_rejects_bad_batches():
    # the mirror sees the product less surely and a little wider: scores and edges averaged
    out = maps_with([(3, 4, 0.8, (2, 1, 1, 3))])
    other = mirrored(maps_with([(3, 4, 0.4, (3, 1, 1, 3))]))
    merged = merge_flipped({k: np.concatenate([out[k], other[k]]) for k in out}, STRIDE, S)
    assert merged["heatmap"][0, 0, 3, 4] == pytest.approx(0.6)
    np.testing.assert_allclose(merged["ltrb"][0, :, 3, 4], [2.5, 1, 1, 3])
    with pytest.raises(ValueError, match="mirror"):
        merge_flipped(out, STRIDE, S)
    with pytest.raises(ValueError, match="line up"):
        merge_flipped({k: np.concatenate([out[k], out[k]]) for k in out}, STRIDE, S + 4)


def test_empty_and_below_threshold_give_no_detection():
    cfg = PreprocessConfig(input_size=S)
    empty = postprocess(maps_with([]), image_size=(50, 40), preprocess=cfg, model_cfg=MODEL_CFG)
    assert len(empty) == 0 and empty.boxes.shape == (0, 4)
    low = maps_with([(2, 2, 0.1, (1, 1, 1, 1))])
    assert len(postprocess(low, image_size=(50, 40), preprocess=cfg, model_cfg=MODEL_CFG)) == 0
    assert len(postprocess(low, image_size=(50, 40), preprocess=cfg, model_cfg=MODEL_CFG,
                           score_threshold=0.05)) == 1
    assert select_main_box(empty, (50, 40)) is None


def test_threshold_and_limits_come_from_model_cfg_then_arguments():
    out = maps_with([(1, 1, 0.5, (1, 1, 1, 1)), (5, 5, 0.4, (1, 1, 1, 1)),
                     (1, 6, 0.3, (1, 1, 1, 1))])
    cfg = PreprocessConfig(input_size=S)
    model_cfg = {**MODEL_CFG, "postprocess": {"score_threshold": 0.45}}
    assert len(postprocess(out, image_size=(S, S), preprocess=cfg, model_cfg=model_cfg)) == 1
    dets = postprocess(out, image_size=(S, S), preprocess=cfg, model_cfg=model_cfg,
                       score_threshold=0.2, max_detections=2)
    np.testing.assert_allclose(dets.scores, [0.5, 0.4])
    assert LocalizerConfig.from_model_cfg(model_cfg).score_threshold == 0.45


def test_only_local_peaks_are_decoded_and_nms_merges_neighbours():
    # two adjacent cells with equal score: both are peaks of their window; NMS keeps the first
    out = maps_with([(4, 4, 0.8, (2, 2, 2, 2)), (4, 5, 0.8, (3, 2, 1, 2)),
                     (4, 3, 0.5, (1, 2, 3, 2))])  # lower neighbour is no peak
    dets = postprocess(out, image_size=(S, S), preprocess=PreprocessConfig(input_size=S),
                       model_cfg=MODEL_CFG)
    assert len(dets) == 1
    np.testing.assert_allclose(dets.boxes[0], [20, 20, 52, 52])


def test_boxes_touching_the_border_are_clipped():
    # a box that extends past the input on every side
    out = maps_with([(0, 0, 0.9, (3, 3, 2, 2)), (7, 7, 0.8, (1, 1, 5, 5))])
    dets = postprocess(out, image_size=(S, S), preprocess=PreprocessConfig(input_size=S),
                       model_cfg=MODEL_CFG)
    np.testing.assert_allclose(dets.boxes, [[0, 0, 20, 20], [52, 52, 64, 64]])


@pytest.mark.parametrize("resize", ["letterbox", "squash", "center_crop"])
@pytest.mark.parametrize("size", [(200, 100), (77, 151), (64, 64), (1000, 30)])
def test_image_input_mapping_round_trips(resize, size):
    cfg = PreprocessConfig(input_size=S, resize=resize)
    w, h = size
    boxes = np.array([[0, 0, w, h], [w * 0.4, h * 0.3, w * 0.6, h * 0.5]], float)
    back = input_to_image_boxes(image_to_input_boxes(boxes, size, cfg), size, cfg)
    np.testing.assert_allclose(back, boxes, atol=1e-9)


def test_letterbox_mapping_matches_the_pixels_of_resize_to_input():
    # a red rectangle in a wide image: find it in the letterboxed input, map it back
    w, h, rect = 300, 120, (60, 30, 180, 90)
    img = Image.new("RGB", (w, h), (255, 255, 255))
    img.paste((255, 0, 0), rect)
    cfg = PreprocessConfig(input_size=S, interpolation="nearest")
    arr = np.asarray(resize_to_input(img, cfg))
    ys, xs = np.nonzero((arr[..., 0] > 200) & (arr[..., 1] < 50))
    found = np.array([[xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]], float)
    expected = image_to_input_boxes(np.array([rect], float), (w, h), cfg)
    np.testing.assert_allclose(found, expected, atol=1.0)  # nearest resampling: ±1 px
    back = input_to_image_boxes(found, (w, h), cfg)
    np.testing.assert_allclose(back[0], rect, atol=w / S + 0.5)


def test_letterbox_maps_padding_outside_the_image_onto_its_border():
    cfg = PreprocessConfig(input_size=S)  # 200x100 → 64x32 content at y 16..48
    out = input_to_image_boxes(np.array([[0, 0, 64, 64]], float), (200, 100), cfg)
    np.testing.assert_allclose(out[0], [0, 0, 200, 100])


def test_main_box_prefers_large_central_confident_boxes():
    size = (100, 100)
    dets = Detections(
        np.array([[0, 0, 10, 10], [30, 30, 70, 70], [80, 80, 100, 100]], np.float32),
        np.array([0.95, 0.7, 0.9], np.float32),
    )
    assert select_main_box(dets, size) == 1
    # pure score when size and centrality weigh nothing
    assert select_main_box(dets, size, size_power=0, center_power=0) == 0
    # ties go to the first (higher-scored) detection
    tie = Detections(np.array([[20, 40, 40, 60], [60, 40, 80, 60]], np.float32),
                     np.array([0.8, 0.8], np.float32))
    assert select_main_box(tie, size) == 0
    # a box whose centre is a corner has centrality 0: it loses to any other
    corner = Detections(np.array([[0, 0, 0.5, 0.5], [90, 0, 100, 10]], np.float32),
                        np.array([0.9, 0.3], np.float32))
    assert select_main_box(corner, size) == 1


def test_crop_rect_grows_and_clips_like_crop_box():
    assert crop_rect((10, 20, 30, 60), 0.1, (100, 100)) == (8.0, 16.0, 32.0, 64.0)
    assert crop_rect((0, 0, 50, 100), 0.5, (60, 100)) == (0.0, 0.0, 60.0, 100.0)
    img = Image.new("RGB", (100, 80))
    box = crop_rect((10, 20, 30, 60), 0.25, img.size)
    assert crop_box(img, box).size == crop_box(img, (10, 20, 30, 60), 0.25).size
    with pytest.raises(ValueError):
        crop_rect((5, 5, 5, 9), 0.1, (10, 10))
    with pytest.raises(ValueError):
        crop_rect((0, 0, 5, 5), -0.1, (10, 10))


def test_postprocess_rejects_batches_and_bad_shapes():
    out = maps_with([(1, 1, 0.9, (1, 1, 1, 1))])
    two = {k: np.concatenate([v, v]) for k, v in out.items()}
    cfg = PreprocessConfig(input_size=S)
    with pytest.raises(ValueError, match="one image"):
        postprocess(two, image_size=(S, S), preprocess=cfg, model_cfg=MODEL_CFG)
    bad = {"heatmap": out["heatmap"], "ltrb": out["ltrb"][:, :2]}
    with pytest.raises(ValueError, match="ltrb"):
        postprocess(bad, image_size=(S, S), preprocess=cfg, model_cfg=MODEL_CFG)
