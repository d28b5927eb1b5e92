"""COCO's instance annotations as one label per image: the supercategory that covers the most of it.

``instances_train2014.json`` / ``instances_val2014.json`` hold ``{"images": [{"id", ...}], "annotations":
[{"image_id", "category_id", "area", ...}], "categories": [{"id", "name", "supercategory"}]}``. Karpathy's COCO
entries carry the same id as ``cocoid``, so ``mmd2v2 data karpathy --instances …`` stores each image's dominant
supercategory in the prepared index (``extra.supercategory``), and the real study colours its embedding map by it.
An image with no annotation (about 1 % of COCO) gets ``NO_OBJECTS``.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from data_prep.karpathy import read_json
from mmd2v2_core.errors import DataError

NO_OBJECTS = "no annotated object"


def _field(item: object, key: str, kind: type | tuple, path: Path, where: str):
    if not isinstance(item, dict) or key not in item:
        raise DataError(f"{path}: {where}: no field {key!r} (is this a COCO instances_*.json?)")
    value = item[key]
    if not isinstance(value, kind) or isinstance(value, bool):
        raise DataError(f"{path}: {where}.{key}: expected {getattr(kind, '__name__', 'a number')}, "
                        f"got {type(value).__name__} {value!r:.60}")
    return value


def dominant_supercategories(paths: list[Path]) -> dict[int, str]:
    """COCO image id → the supercategory with the largest summed annotation area in it, over every file given."""
    labels: dict[int, str] = {}
    for path in map(Path, paths):
        data = read_json(path)
        if not isinstance(data, dict):
            raise DataError(f"{path}: expected a JSON object with images, annotations and categories")
        categories = _field(data, "categories", list, path, "top level")
        supercategory = {_field(c, "id", int, path, f"categories[{i}]"):
                         _field(c, "supercategory", str, path, f"categories[{i}]") for i, c in enumerate(categories)}
        area: dict[int, dict[str, float]] = defaultdict(lambda: defaultdict(float))
        for i, annotation in enumerate(_field(data, "annotations", list, path, "top level")):
            where = f"annotations[{i}]"
            category = _field(annotation, "category_id", int, path, where)
            if category not in supercategory:
                raise DataError(f"{path}: {where}.category_id: {category} is not in categories")
            area[_field(annotation, "image_id", int, path, where)][supercategory[category]] += \
                _field(annotation, "area", (int, float), path, where)
        for i, image in enumerate(_field(data, "images", list, path, "top level")):
            image_id = _field(image, "id", int, path, f"images[{i}]")
            covered = area.get(image_id)
            labels[image_id] = max(sorted(covered), key=covered.get) if covered else NO_OBJECTS
    return labels
