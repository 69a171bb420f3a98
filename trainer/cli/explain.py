"""``allgui-train explain``: the heatmaps of both backbones for one image, written as a picture."""
from __future__ import annotations

import argparse
from pathlib import Path

from trainer.cli.common import UsageError, check_output_file, probability
from trainer.util.atomic import atomic_write
from trainer.util.csvsafe import printable


def _cell(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if v < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, not {v}")
    return v


def _check_cell(cell: int | None, n_cells: int, name: str) -> None:
    """Refuse a --cell the image does not have, counting as predict's CSV does (from 0)."""
    if cell is None or cell < n_cells:
        return
    if n_cells == 0:
        raise UsageError(f"--cell {cell}: no white cell was found in {printable(name)} (a single-cell crop is "
                         "explained whole: leave out --cell).")
    which = "its one white cell is cell 0" if n_cells == 1 else \
        f"its {n_cells} white cells are numbered from 0 to {n_cells - 1}"
    raise UsageError(f"--cell {cell}: there is no cell {cell} in {printable(name)}; {which}, as in the cell "
                     "column of predict's CSV.")


def register(sub) -> argparse.ArgumentParser:
    """Add the ``explain`` subcommand to ``sub`` (an argparse subparsers object)."""
    e = sub.add_parser(
        "explain", help="heatmaps of where each network looked, as a PNG",
        description="Grad-CAM heatmaps of DenseNet-121 and ResNet-34 for the ALL class (of a logistic probe "
                    "fitted on each backbone's features at training time), beside the image and its nucleus "
                    "outline. A heatmap shows where the network looked, not why it is right.")
    e.add_argument("image", help="image file: a single-cell crop or a smear field")
    e.add_argument("-m", "--model", required=True, help="model bundle (.allmodel) trained with explanation probes")
    e.add_argument("-o", "--output", default="heatmap.png", help="PNG to write (default: %(default)s)")
    e.add_argument("--cell", type=_cell, default=None,
                   help="white cell of a smear field to explain, numbered as in the cell column of predict's "
                        "CSV (0 = the first); default: a field's most suspicious cell where its cells decide, "
                        "else the whole image")
    e.add_argument("--plain", action="store_true",
                   help="plain Grad-CAM: do not centre the maps on the training images' mean feature map (which "
                        "cancels patterns a network shows in every image, e.g. at its border)")
    e.add_argument("--opacity", type=probability, default=0.7,
                   help="heatmap opacity at its peak, 0..1; lower heat is more transparent (default: %(default)s)")
    e.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    e.set_defaults(func=run)
    return e


def run(a) -> int:
    if Path(a.output).suffix.lower() != ".png":
        raise UsageError(f"-o/--output {printable(a.output)}: the picture is written as PNG; give a .png name.")
    check_output_file(a.output, "-o/--output")
    # cv2, torch and the models load only when the command runs, not for every allgui-train call
    import cv2

    from trainer.inference.explain import BACKBONE_LABELS, CAPTION, explain, render, target_cell  # (torch)
    from trainer.inference.predictor import Predictor
    from trainer.inference.probes import require_probes
    from trainer.inference.results import decide
    from trainer.io.imageio import read_image

    image = read_image(a.image)
    predictor = Predictor.from_bundle(a.model, device=a.device)
    require_probes(predictor)  # before the image is analysed
    prediction = predictor.predict(image, path=str(a.image))
    _check_cell(a.cell, len(prediction.cells), Path(a.image).name)
    cell = target_cell(prediction) if a.cell is None else a.cell
    ex = explain(image, predictor, cell=cell, prediction=prediction, reference=not a.plain)
    shown = prediction.whole if cell < 0 else prediction.cells[cell]
    threshold = predictor.thresholds.get(prediction.model, predictor.threshold)
    where = "whole image" if cell < 0 else f"cell {cell}"
    title = (f"{Path(a.image).name}, {where}: {prediction.model_name}, calibrated P(ALL) {shown.probability:.2f} "
             f"({decide(shown.probability, threshold)} at {threshold:.2f})")
    picture = render(image, ex, opacity=a.opacity, title=printable(title))
    ok, png = cv2.imencode(".png", cv2.cvtColor(picture, cv2.COLOR_RGB2BGR))
    if not ok:
        raise OSError(f"could not encode {a.output} as PNG")
    atomic_write(a.output, lambda fh: fh.write(png.tobytes()))
    x, y, w, h = ex.region
    print(f"Explained the {where} ({w}x{h} pixels at {x},{y}) with the {prediction.model_name}'s probes "
          f"in {ex.seconds:.2f} s")
    for b in ex.backbones:
        px, py = ex.peak(b)
        peak = f"peak at x={px}, y={py}" if ex.peak_logit[b] > 0 else "nothing in the region raised the ALL logit"
        print(f"  {BACKBONE_LABELS.get(b, b)}: probe P(ALL) {ex.probability(b):.2f}; {peak}")
    for note in ex.notes:
        print(f"Note: {note}")
    print(CAPTION)
    print(f"Picture written to {printable(a.output)}")
    return 0
