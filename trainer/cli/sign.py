"""``allgui-train sign``: enter a case's metadata and sign it off, or add an addendum to a signed case.

The same API the app's dialog calls (:mod:`trainer.cases.signoff`): every value and the sign-off are
appended to the case file's hash chain with the person's name and local time.
"""
from __future__ import annotations

import argparse

from trainer.util.csvsafe import printable

#: option -> case metadata field
FIELDS = {"specimen_id": "--specimen-id", "specimen_type": "--specimen-type", "stain": "--stain",
          "magnification": "--magnification", "clinical_note": "--clinical-note", "conclusion": "--conclusion"}


def register(sub) -> argparse.ArgumentParser:
    """Add the ``sign`` subcommand to ``sub`` (an argparse subparsers object)."""
    c = sub.add_parser("sign", help="enter a case's metadata and sign it off (or add an addendum)",
                       description="Enter the metadata of a case file and sign it off: its report then reads "
                                   "\"Final\" with the signer and their local time. A sign-off needs a specimen "
                                   "id and the reviewer's conclusion (given here or entered before). Whatever "
                                   "is recorded afterwards is shown as an addendum. With --metadata-only the "
                                   "values are entered without signing; with --addendum a signed case gets an "
                                   "addendum. Research use only.")
    c.add_argument("case", help="case file (.sqlite)")
    c.add_argument("--name", required=True, help="the person entering the values and signing (recorded with them)")
    c.add_argument("--specimen-id", help="patient or specimen id")
    c.add_argument("--specimen-type", help="e.g. peripheral blood, bone marrow aspirate")
    c.add_argument("--stain", help="e.g. May-Gruenwald-Giemsa")
    c.add_argument("--magnification", help="e.g. 100x oil")
    c.add_argument("--clinical-note", help="clinical information given with the specimen")
    c.add_argument("--conclusion", help="the reviewer's conclusion in words")
    what = c.add_mutually_exclusive_group()
    what.add_argument("--metadata-only", action="store_true", help="enter the values, do not sign")
    what.add_argument("--addendum", metavar="TEXT", help="add this addendum to a signed case")
    c.set_defaults(func=run)
    return c


def run(a) -> int:
    from trainer.cases.store import CaseStore  # sqlite and the case code load only for this command
    from trainer.util.errors import CaseError
    values = {key: getattr(a, key) for key in FIELDS if getattr(a, key) is not None}
    with CaseStore.open(a.case) as store:
        if a.addendum is not None:
            if store.signoff is None:
                raise CaseError(f"{store.path.name} is not signed yet: an addendum follows a sign-off.")
            store.set_metadata(values, author=a.name)
            store.add_addendum(a.addendum, author=a.name)
            print(f"Addendum by {printable(a.name)} added to the signed case {printable(store.name)}.")
        elif a.metadata_only:
            written = store.set_metadata(values, author=a.name)
            print(f"Case {printable(store.name)}: {len(written)} value(s) entered"
                  + (" (after the sign-off: shown as addenda)" if store.signoff is not None else "")
                  + f"; status {store.status}.")
        else:
            so = store.sign(a.name, metadata=values)
            print(f"Case {printable(store.name)} signed by {printable(so.author)} on {so.local_at}: final.")
    return 0
