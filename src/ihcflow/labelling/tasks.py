"""Label Studio's JSON, as ihcflow writes and reads it: one home for the format.

The labelling config (:func:`label_config`) has one ``Image`` named ``image`` and one
single-choice ``Choices`` named ``label`` holding the model's classes. A task::

    {"data": {"image": "data:image/png;base64,...", "sha256": "<of the original file>",
              "file": "<name in the batch>", "batch": "<batch folder name>"},
     "predictions": [{"model_version": "ihc-classifier 1.0.1", "score": 0.52,
                      "result": [{"from_name": "label", "to_name": "image", "type": "choices",
                                  "value": {"choices": ["Er"]}}]}]}

The image travels inside the task as a data URL: Label Studio shows it with no file serving or
storage set up, offline, and the import file works the same when uploaded by hand. PNG, JPEG
and BMP are sent as they are; browsers do not show TIFF, so a TIFF is sent as a PNG rendition
(``data.sha256`` still names the original, which ``label pull`` then takes from the batch).
An annotation's label is its ``choices`` result from ``label`` (:func:`annotation_label`).
"""

from __future__ import annotations

import base64
import binascii
import re
import xml.etree.ElementTree as ET
from collections.abc import Mapping, Sequence
from typing import Any
from xml.sax.saxutils import quoteattr

FROM_NAME = "label"  # the Choices control
TO_NAME = "image"  # the Image object
SHOWN_AS_IS = {"PNG": "image/png", "JPEG": "image/jpeg", "BMP": "image/bmp"}
_DATA_URL = re.compile(
    r"^data:(?P<mime>[\w.+-]+/[\w.+-]+)?(?:;[\w=.-]+)*;base64,(?P<b64>.*)$", re.S
)


def label_config(class_names: Sequence[str], title: str) -> str:
    """The labelling interface: the image, and one choice among ``class_names``."""
    if len(class_names) < 2:
        raise ValueError(f"a classification project needs at least 2 classes, got {class_names}")
    choices = "\n".join(f"    <Choice value={quoteattr(c)}/>" for c in class_names)
    return (
        "<View>\n"
        f"  <Header value={quoteattr(title)}/>\n"
        f'  <Image name="{TO_NAME}" value="${TO_NAME}" zoom="true" zoomControl="true"/>\n'
        f'  <Choices name="{FROM_NAME}" toName="{TO_NAME}" choice="single" showInline="true"'
        ' required="true">\n'
        f"{choices}\n"
        "  </Choices>\n"
        "</View>\n"
    )


def config_classes(config: str) -> list[str]:
    """The choices of the ``label`` control of a labelling config (empty if it has none)."""
    try:
        root = ET.fromstring(config)
    except ET.ParseError as exc:
        raise ValueError(f"the project's labelling config is not valid XML: {exc}") from None
    for node in root.iter("Choices"):
        if node.get("name") == FROM_NAME:
            return [str(c.get("value")) for c in node.iter("Choice")]
    return []


def data_url(data: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def data_url_bytes(url: str) -> bytes | None:
    """The bytes of a base64 data URL, or None when ``url`` is not one."""
    match = _DATA_URL.match(url or "")
    if not match:
        return None
    try:
        return base64.b64decode(match["b64"], validate=True)
    except (binascii.Error, ValueError):
        return None


def choice_result(label: str) -> list[dict[str, Any]]:
    return [
        {
            "from_name": FROM_NAME,
            "to_name": TO_NAME,
            "type": "choices",
            "value": {"choices": [label]},
        }
    ]


def make_task(
    image_url: str, data: Mapping[str, Any], predicted: str, score: float, model_version: str
) -> dict[str, Any]:
    """One task: the image, extra ``data`` fields, and the model's choice as a prediction."""
    return {
        "data": {TO_NAME: image_url, **data},
        "predictions": [
            {
                "model_version": model_version,
                "score": round(float(score), 6),
                "result": choice_result(predicted),
            }
        ],
    }


class UnreadableAnnotation(ValueError):
    """An annotation whose result is not one choice of the ``label`` control."""


def annotation_label(annotation: Mapping[str, Any]) -> str | None:
    """The class an annotation chose; None when it chose nothing. More than one choice is an
    :class:`UnreadableAnnotation`."""
    labels: list[str] = []
    for item in annotation.get("result") or []:
        if not isinstance(item, Mapping) or item.get("from_name") != FROM_NAME:
            continue
        choices = (item.get("value") or {}).get("choices") or []
        labels.extend(str(c) for c in choices)
    if len(labels) > 1:
        raise UnreadableAnnotation(f"{len(labels)} choices {labels}, expected one")
    return labels[0] if labels else None


def annotator_of(annotation: Mapping[str, Any], names: Mapping[int, str]) -> str:
    """Who made an annotation: ``completed_by`` is a user id (JSON export) or a user object."""
    who = annotation.get("completed_by")
    if isinstance(who, Mapping):
        return str(who.get("email") or who.get("username") or f"user {who.get('id')}")
    if isinstance(who, int) and who in names:
        return names[who]
    return f"user {who}"
