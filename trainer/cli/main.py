"""Command line: ``allgui-train train|evaluate|predict|explain|finetune|report|sign`` (also ``python -m trainer``).

Each subcommand is a module of this package with ``register(subparsers)`` and ``run(args)``.
"""
from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys

from trainer.cli import evaluate, explain, finetune, predict, report, sign, train
from trainer.cli.common import sigterm_interrupts
from trainer.util.csvsafe import printable
from trainer.util.errors import AllguiError, Cancelled

#: the subcommands, in the order ``--help`` lists them
COMMANDS = (train, evaluate, predict, explain, finetune, report, sign)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="allgui-train",
        description="Train, evaluate and apply the allgui ALL-blast ensemble (DenseNet-121 + ResNet-34 deep "
                    "features, SVM/KNN/RF/AdaBoost/MLP, weighted voting, calibration). Research use only.")
    sub = p.add_subparsers(dest="command", required=True,
                           metavar="{train,evaluate,predict,explain,finetune,report,sign}")
    for command in COMMANDS:
        command.register(sub)
    return p


class _ConsoleLog(logging.Handler):
    """Data warnings (skipped files and why) printed on stderr while the CLI runs."""

    def emit(self, record: logging.LogRecord) -> None:
        with contextlib.suppress(Exception):
            print(f"allgui-train: {printable(record.getMessage())}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    log = logging.getLogger("trainer.io.data")
    handler = _ConsoleLog()
    log.addHandler(handler)
    old_level = log.level
    log.setLevel(logging.INFO)
    try:
        with sigterm_interrupts():
            return int(args.func(args) or 0)
    except Cancelled as e:
        print(f"allgui-train: {e}", file=sys.stderr)
        return 130
    except AllguiError as e:
        print(f"allgui-train: error: {printable(str(e))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("allgui-train: interrupted; nothing was written.", file=sys.stderr)
        return 130
    except OSError as e:  # a full disk, a read-only folder, a vanished file: one line, no traceback
        where = f": {printable(str(e.filename))}" if e.filename else ""
        print(f"allgui-train: error: {printable(e.strerror or str(e))}{where}", file=sys.stderr)
        return 1
    except (ValueError, MemoryError) as e:
        text = "not enough memory" if isinstance(e, MemoryError) else printable(str(e))
        print(f"allgui-train: error: {text}", file=sys.stderr)
        return 2
    finally:
        log.removeHandler(handler)
        log.setLevel(old_level)


def console() -> None:
    """Console-script entry (``allgui-train``, ``python -m trainer``): :func:`main`, then exit at once.

    The interpreter's teardown of torch (and SciPy and scikit-learn, where loaded) takes 0.3-0.7 s of a
    one-image ``predict`` and does nothing a finished command needs: every output file is written, synced and
    renamed before :func:`main` returns, and the threads still alive are idle pool workers. The streams
    and log handlers are flushed first. With a child process still running (a data-loader worker), the
    ordinary exit runs instead, which waits for it.
    """
    code = main()
    mp = sys.modules.get("multiprocessing")
    if mp is not None and mp.active_children():
        sys.exit(code)
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    logging.shutdown()
    os._exit(code)


if __name__ == "__main__":
    console()

