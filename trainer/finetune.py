"""``python -m trainer.finetune``: the fine-tuning command, kept for scripts and ``torchrun -m``.

The command lives in :mod:`trainer.cli.finetune` (also ``allgui-train finetune``).
"""
import sys

from trainer.cli.finetune import main

if __name__ == "__main__":
    sys.exit(main())
