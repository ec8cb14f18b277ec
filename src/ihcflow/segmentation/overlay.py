"""Contours of true and predicted nuclei drawn on the image, to look at what the model does."""

from __future__ import annotations

import cv2
import numpy as np

from ihcflow.segmentation.labels import POSITIVE, Annotation

TRUE_COLOUR = (0, 200, 0)  # green: the annotation
PRED_COLOURS = {False: (0, 220, 255), True: (255, 40, 40)}  # RGB: negative cyan, positive red
_SQUARE = np.ones((3, 3), np.uint8)


def contours(instances: np.ndarray) -> np.ndarray:
    """(H, W) bool: the inner 1-px outline of every nucleus (also between touching ones)."""
    inst = instances.astype(np.uint16, copy=False)
    inner = (cv2.dilate(inst, _SQUARE) != inst) | (cv2.erode(inst, _SQUARE) != inst)
    return inner & (inst > 0)


def draw(image: np.ndarray, true: Annotation | None, pred: Annotation) -> np.ndarray:
    """A copy of ``image`` (H, W, 3 uint8 RGB) with true outlines in green and predicted ones
    in cyan (negative) or red (positive), predicted drawn last."""
    out = image.copy()
    if true is not None:
        out[contours(true.instances)] = TRUE_COLOUR
    edge = contours(pred.instances)
    positive = (pred.classes == POSITIVE)[pred.instances]
    for is_pos, colour in PRED_COLOURS.items():
        out[edge & (positive == is_pos)] = colour
    return out
