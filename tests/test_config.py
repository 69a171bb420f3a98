"""One source of truth for settings: the config's fields carry defaults, choices and descriptions;
the command line and the Retrain dialog are built from them, and validation refuses what cannot work."""
import dataclasses

import pytest

from trainer.cli.main import build_parser
from trainer.config import (
    ConfigError,
    FinetuneConfig,
    TrainConfig,
    as_train_config,
    choices,
    default,
    describe,
)


def _option(parser, command: str, flag: str):
    sub = next(a for a in parser._actions if a.dest == "command").choices[command]
    return next(a for a in sub._actions if flag in a.option_strings)


@pytest.mark.parametrize("command", ["train", "evaluate"])
@pytest.mark.parametrize("flag,name", [("--layout", "layout"), ("--split", "split"), ("--device", "device"),
                                       ("--precision", "precision"), ("--calibration", "calibration"),
                                       ("--combiner", "combiner"), ("--stain", "stain"),
                                       ("--calibrate-on", "calibrate_on")])
def test_command_line_choices_and_defaults_come_from_the_config(command, flag, name):
    action = _option(build_parser(), command, flag)
    assert tuple(action.choices) == choices(name)
    assert action.default == default(name) == getattr(TrainConfig(), name)


def test_finetuning_options_default_to_the_nested_config():
    p = build_parser()
    d = FinetuneConfig()
    assert _option(p, "train", "--epochs").default == d.epochs
    assert _option(p, "train", "--patience").default == d.patience
    assert _option(p, "train", "--finetune-lr").default == d.lr
    assert _option(p, "finetune", "--weight-decay").default == d.weight_decay
    assert _option(p, "finetune", "--batch-size").default == TrainConfig().batch_size
    assert describe("finetuning.lr") and describe("layout")
    assert _option(p, "train", "--jobs").default == default("jobs") == TrainConfig().jobs == -1


def test_validation_refuses_settings_that_cannot_work():
    TrainConfig().validate()
    for bad in (dict(split="patient"), dict(stain="macenko"), dict(classifiers=("svm", "xgb")),
                dict(gamma=2.0), dict(finetuning=FinetuneConfig(epochs=0)), dict(jobs=0)):
        with pytest.raises(ConfigError):
            dataclasses.replace(TrainConfig(), **bad).validate()


def test_config_round_trips_and_reads_the_flat_keys_of_older_bundles():
    c = TrainConfig(image_size=64, finetuning=FinetuneConfig(epochs=3, lr=1e-3, checkpoint_dir="ck"))
    assert TrainConfig.from_dict(c.to_dict()) == c
    old = {"image_size": 64, "finetune_epochs": 3, "finetune_lr": 1e-3, "finetune_checkpoint_dir": "ck"}
    assert TrainConfig.from_dict(old) == c
    assert as_train_config(FinetuneConfig(epochs=3)).finetuning.epochs == 3
    assert c.finetune_summary()["batch_size"] == c.batch_size  # not restated: the config's own


def test_retrain_dialog_offers_the_configs_choices(qtbot):
    pytest.importorskip("pytestqt")
    from allgui.model.retrain import RetrainDialog

    d = RetrainDialog(settings=None)
    qtbot.addWidget(d)
    for box, name in ((d.layout_box, "layout"), (d.split, "split"), (d.device, "device")):
        assert tuple(box.itemText(i) for i in range(box.count())) == choices(name)
        assert box.toolTip() == describe(name)


def test_retrain_dialog_passes_the_stain_jitter_to_fine_tuning(qtbot):
    pytest.importorskip("pytestqt")
    from allgui.model.retrain import RetrainDialog

    d = RetrainDialog(settings=None)
    qtbot.addWidget(d)
    assert d.stain_jitter.value() == FinetuneConfig().stain_jitter == 0.0
    assert d.stain_jitter.text() == "off"
    assert d.stain_jitter.maximum() == 0.5 and d.stain_jitter.toolTip().startswith(describe("finetuning.stain_jitter"))
    d.stain_jitter.setValue(0.05)
    cfg = d.config()
    assert cfg.finetuning.stain_jitter == 0.05
    cfg.validate()


def test_a_manifest_with_mistyped_finetuning_settings_is_refused():
    from trainer.inference.manifest_schema import check_config
    from trainer.util.errors import BundleError

    check_config(TrainConfig().to_dict(), "m.allmodel")
    for bad in ({"finetuning": {"epochs": "many"}}, {"finetuning": 3}, {"finetune_lr": "fast"}):
        with pytest.raises(BundleError, match="damaged"):
            check_config(bad, "m.allmodel")
