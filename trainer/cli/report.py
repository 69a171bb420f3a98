"""``allgui-train report``: a case's review report as a PDF (see :mod:`trainer.cases.report`)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from trainer.cli.common import ProgressBar, UsageError, check_output_file, int_range, positive_int
from trainer.util.csvsafe import printable

#: most images a page: an image's block is then an eighth of the page, room for its thumbnail and its
#: lines down to the reviewer's decision (smaller blocks cut that off; past 56 the layout has no room)
MAX_PER_PAGE = 8


def register(sub) -> argparse.ArgumentParser:
    """Add the ``report`` subcommand to ``sub`` (an argparse subparsers object)."""
    c = sub.add_parser("report", help="write a case's review report as a PDF",
                       description="Write the report of a case file (the app's review database): status "
                                   "(preliminary, or final with the signer and their local time), specimen, "
                                   "case summary (cells reviewed, blasts and their proportion, conclusion), "
                                   "addenda after the sign-off, the images not reviewed, counts, model card "
                                   "headline and limitations, then each image with its outlines, probabilities, "
                                   "votes, the model's and the reviewer's decision. Research use only.")
    c.add_argument("case", help="case file (.sqlite) written by the app, or the folder the app keeps it in")
    c.add_argument("-o", "--output", default="case.pdf", help="PDF to write (default: %(default)s)")
    c.add_argument("--per-page", type=int_range(1, MAX_PER_PAGE), default=6,
                   help=f"images per page, 1 to {MAX_PER_PAGE} (default: %(default)s)")
    c.add_argument("--max-images", type=positive_int, default=500,
                   help="images with an entry on the image pages at most, the reviewed first; the first page says "
                        "when a case has more, and its counts and lists cover all (default: %(default)s)")
    c.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    c.set_defaults(func=run)
    return c


def run(a) -> int:
    from trainer.cases.report import write_case_report  # matplotlib loads only when a report is written
    from trainer.cases.schema import DEFAULT_CASE_NAME
    case = Path(a.case)
    if case.is_dir():  # the folder of a case's images: the case file the app keeps there
        if not (case / DEFAULT_CASE_NAME).is_file():
            raise UsageError(f"{printable(a.case)} is a folder without a case file ({DEFAULT_CASE_NAME}); "
                             "give the case file.")
        case = case / DEFAULT_CASE_NAME
    check_output_file(a.output, "-o/--output")
    bar = ProgressBar(a.quiet)
    try:
        counts = write_case_report(case, a.output, per_page=a.per_page, progress=bar, max_images=a.max_images)
    finally:
        bar.close()
    print(f"Case report written to {printable(a.output)}: {counts['pages']} pages, {counts['images']} images, "
          f"{counts['reviewed']} reviewed, {counts['overrides']} overridden; {counts['status']}"
          + (f"; image pages for {counts['shown']} of them (--max-images)" if counts["shown"] < counts["images"]
             else ""))
    if counts["missing"] or counts["changed"]:
        print(f"allgui-train: {counts['missing']} image file(s) not found and {counts['changed']} changed since "
              "analysis; the report says which", file=sys.stderr)
    return 0
