"""Nucleus segmentation against expert masks, on single-cell crops and on the raw fields.

    python benchmarks/segmentation_quality.py --data DIR [--out DIR] [--n N] [--code OLD_CHECKOUT]

``DIR`` holds ``NNN.bmp`` (an RGB image with one white cell) and ``NNN.png`` (the expert's mask:
nucleus 255, cytoplasm 128, background 0). Each image goes through ``segment_nuclei`` twice:

* **crop**: the cell cut out along the expert's cell outline (nucleus + cytoplasm) onto black, centred,
  scaled (bicubic) so that its longer side is 45 % of a 450 px square, as a C-NMC crop looks; the
  expert masks are scaled the same way (nearest neighbour). Made here from the raw image and mask, so
  that crop and mask line up pixel for pixel;
* **field**: the raw image as it is; the nucleus compared is the one found that overlaps the expert
  nucleus most (none: Dice 0). Other nuclei found elsewhere in the image are counted as ``extra``.

Per image: nucleus Dice and IoU, cell Dice (where the method returns a cell outline), the error of the
nucleus-to-cell area ratio (where the method returns one) and the segmentation confidence (where the
method returns one). Printed: median / mean / share under Dice 0.7 per path. With ``--out`` the worst
ten images of each path are drawn (image, expert, ours) into ``worst_<path>.png`` and the per-image
numbers written to ``quality_<path>.csv``. ``--code`` runs the trainer package of another checkout.
"""
from __future__ import annotations

import argparse
import csv
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
CROP_SIDE = 450
CELL_SHARE = 0.45


def make_cutout(img: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(crop (450, 450, 3) uint8, expert mask (450, 450) uint8) of the cell of ``img`` on black."""
    import cv2

    cell = mask > 0
    ys, xs = np.nonzero(cell)
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    scale = CELL_SHARE * CROP_SIDE / max(y1 - y0, x1 - x0)
    sub = np.where(cell[..., None], img, 0)[y0:y1, x0:x1]
    size = (max(1, round((x1 - x0) * scale)), max(1, round((y1 - y0) * scale)))
    big = np.clip(cv2.resize(sub.astype(np.float32), size, interpolation=cv2.INTER_CUBIC), 0, 255)
    m = cv2.resize(mask[y0:y1, x0:x1], size, interpolation=cv2.INTER_NEAREST)
    big[m == 0] = 0
    out = np.zeros((CROP_SIDE, CROP_SIDE, 3), np.uint8)
    out_m = np.zeros((CROP_SIDE, CROP_SIDE), np.uint8)
    oy, ox = (CROP_SIDE - size[1]) // 2, (CROP_SIDE - size[0]) // 2
    out[oy:oy + size[1], ox:ox + size[0]] = big.round().astype(np.uint8)
    out_m[oy:oy + size[1], ox:ox + size[0]] = m
    return out, out_m


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    s = a.sum() + b.sum()
    return float(2 * (a & b).sum() / s) if s else 1.0


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    u = (a | b).sum()
    return float((a & b).sum() / u) if u else 1.0


def score(img: np.ndarray, expert: np.ndarray) -> dict:
    """Numbers of one image (and the masks found, for drawing)."""
    from trainer.vision.segmentation import segment_nuclei

    seg = segment_nuclei(img)
    nuc_true, cell_true = expert == 255, expert > 0
    found = None
    extra = 0
    if seg.nuclei:
        overlaps = [(seg.labels == i + 1)[nuc_true].sum() for i in range(len(seg.nuclei))]
        best = int(np.argmax(overlaps))
        found = seg.labels == best + 1
        extra = len(seg.nuclei) - 1
    found = found if found is not None else np.zeros_like(nuc_true)
    row = {"dice": _dice(found, nuc_true), "iou": _iou(found, nuc_true), "extra": extra,
           "cell_dice": np.nan, "nc_error": np.nan, "confidence": np.nan}
    cell = getattr(seg, "cell_mask", None)
    if seg.kind == "field":
        cells = getattr(seg, "cell_masks", None)
        cell = cells[best] if cells and seg.nuclei and cells[best] is not None else None
    if cell is not None and cell.any():
        row["cell_dice"] = _dice(cell, cell_true)
    if seg.nuclei:
        nc = seg.nuclei[best].nc_ratio
        if nc is not None:
            row["nc_error"] = abs(nc - nuc_true.sum() / max(cell_true.sum(), 1))
        conf = getattr(seg.nuclei[best], "confidence", None)
        if conf is not None:
            row["confidence"] = float(conf)
    row["_found"], row["_cell"] = found, cell
    return row


def _draw(rows: list[dict], path: Path) -> None:
    import cv2

    tiles = []
    for r in rows:
        img, expert, found = r["_img"], r["_expert"], r["_found"]
        side = 150
        ours = np.zeros(expert.shape, np.uint8)
        if r["_cell"] is not None:
            ours[r["_cell"]] = 128
        ours[found] = 255
        panels = [img, np.dstack([expert] * 3), np.dstack([ours] * 3)]
        panels = [cv2.resize(p, (side, side), interpolation=cv2.INTER_NEAREST) for p in panels]
        row = np.hstack(panels)
        cv2.putText(row, f"{r['name']} {r['cls']} D={r['dice']:.2f}", (4, 14), cv2.FONT_HERSHEY_SIMPLEX, 0.4,
                    (0, 255, 0), 1)
        tiles.append(row)
    cv2.imwrite(str(path), cv2.cvtColor(np.vstack(tiles), cv2.COLOR_RGB2BGR))


def _summary(name: str, rows: list[dict]) -> str:
    d = np.array([r["dice"] for r in rows])
    iou = np.array([r["iou"] for r in rows])
    cd = np.array([r["cell_dice"] for r in rows])
    nce = np.array([r["nc_error"] for r in rows])
    conf = np.array([r["confidence"] for r in rows])
    extra = np.array([r["extra"] for r in rows])

    def med(x):
        x = x[np.isfinite(x)]
        return f"{np.median(x):.3f}" if len(x) else "  n/a"

    low = d < 0.7
    conf_note = ""
    if np.isfinite(conf).any():
        conf_note = f" | conf med {med(conf)}, conf low/high Dice {med(conf[low])}/{med(conf[~low])}"
    return (f"{name:5s} {len(rows):4d} | Dice med {np.median(d):.3f} mean {d.mean():.3f} | <0.7 {low.mean():5.1%} | "
            f"IoU med {np.median(iou):.3f} | cell Dice med {med(cd)} ({np.isfinite(cd).sum()}) | "
            f"N:C err med {med(nce)} mean {np.nanmean(nce) if np.isfinite(nce).any() else np.nan:.3f} | "
            f"extra nuclei {np.mean(extra > 0):.1%}{conf_note}")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True, help="folder of NNN.bmp images and NNN.png expert masks")
    ap.add_argument("--labels", help="CSV of image id, class number (default: DIR/class_labels.csv)")
    ap.add_argument("--out", help="folder for the worst-ten drawings and per-image CSVs")
    ap.add_argument("--n", type=int, default=0, help="first N images only (0: all)")
    ap.add_argument("--code", help="folder holding another checkout's trainer package")
    ap.add_argument("--paths", default="crop,field", help="which paths: crop, field or both")
    a = ap.parse_args(argv)
    sys.path.insert(0, str(Path(a.code).resolve() if a.code else ROOT))
    import cv2

    data = Path(a.data)
    classes = {}
    labels = Path(a.labels) if a.labels else data / "class_labels.csv"
    if labels.is_file():
        names = {1: "neutrophil", 2: "lymphocyte", 3: "monocyte", 4: "eosinophil", 5: "basophil"}
        with open(labels) as f:
            for rec in list(csv.reader(f))[1:]:
                classes[int(rec[0])] = names.get(int(rec[1]), rec[1])
    files = sorted(p for p in data.glob("*.bmp") if (p.with_suffix(".png")).is_file())
    files = files[:a.n] if a.n else files
    out = Path(a.out) if a.out else None
    if out:
        out.mkdir(parents=True, exist_ok=True)
    for path_kind in a.paths.split(","):
        rows = []
        t0 = time.process_time()
        for f in files:
            img = cv2.cvtColor(cv2.imread(str(f)), cv2.COLOR_BGR2RGB)
            expert = cv2.imread(str(f.with_suffix(".png")), cv2.IMREAD_GRAYSCALE)
            if path_kind == "crop":
                img, expert = make_cutout(img, expert)
            r = score(img, expert)
            r.update(name=f.stem, cls=classes.get(int(f.stem), "?") if f.stem.isdigit() else "?",
                     _img=img, _expert=expert)
            rows.append(r)
        cpu = time.process_time() - t0
        print(_summary(path_kind, rows) + f" | CPU {1000 * cpu / max(len(rows), 1):.0f} ms/img", flush=True)
        by_class: dict[str, list] = {}
        for r in rows:
            by_class.setdefault(r["cls"], []).append(r["dice"])
        print("      by class: " + ", ".join(
            f"{c} {len(v)}: med {np.median(v):.3f}, <0.7 {np.mean(np.array(v) < 0.7):.0%}"
            for c, v in sorted(by_class.items())))
        if out:
            worst = sorted(rows, key=lambda r: r["dice"])[:10]
            _draw(worst, out / f"worst_{path_kind}.png")
            keys = ["name", "cls", "dice", "iou", "cell_dice", "nc_error", "confidence", "extra"]
            with open(out / f"quality_{path_kind}.csv", "w", newline="") as fh:
                w = csv.writer(fh)
                w.writerow(keys)
                for r in rows:
                    w.writerow([r[k] if not isinstance(r[k], float) else f"{r[k]:.4f}" for k in keys])


if __name__ == "__main__":
    main()
