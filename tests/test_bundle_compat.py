"""Bundles written before the package was cut into layers name their estimators by the old module
paths (``trainer.model.AllModel``); they still load, as today's classes, and nothing else is trusted."""
import io
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from conftest import rewrite_bundle

from trainer.classical.model import AllModel, KindModels
from trainer.inference.bundle import LEGACY_MODULES, current_type_names, load_bundle
from trainer.util.errors import BundleError

SHIPPED = Path(__file__).resolve().parent.parent / "resources" / "models" / "default.allmodel"


def _schema(skops_bytes: bytes) -> str:
    with zipfile.ZipFile(io.BytesIO(skops_bytes)) as zf:
        return zf.read("schema.json").decode()


def _rename_modules(skops_bytes: bytes, mapping: dict[str, str]) -> bytes:
    """The skops payload with the ``__module__`` names in its schema replaced by ``mapping``."""
    buf = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(skops_bytes)) as zin, zipfile.ZipFile(buf, "w") as zout:
        for info in zin.infolist():
            data = zin.read(info)
            if info.filename == "schema.json":
                text = data.decode()
                for old, new in mapping.items():
                    text = text.replace(f'"__module__": "{old}"', f'"__module__": "{new}"')
                data = text.encode()
            zout.writestr(info.filename, data)
    return buf.getvalue()


#: the model member of the tiny bundle (one crop model)
MEMBER = "model-single_cell.skops"


def _with_model(src, dst, skops_bytes: bytes):
    """A copy of bundle ``src`` whose model member is ``skops_bytes`` (manifest hashes updated)."""
    return rewrite_bundle(src, dst, replace={MEMBER: skops_bytes})


@pytest.mark.skipif(not SHIPPED.is_file(), reason="the shipped default model is not in this checkout")
def test_shipped_default_model_loads_with_todays_classes():
    with zipfile.ZipFile(SHIPPED) as zf:
        schema = _schema(zf.read("model-single_cell.skops")) + _schema(zf.read("model-field.skops"))
    # rebuilt after the layers: today's names, none of the old ones (those are mapped, see below)
    assert '"trainer.classical.model"' in schema
    assert not any(f'"{name}"' in schema for name in LEGACY_MODULES)
    b = load_bundle(SHIPPED)
    assert isinstance(b.model, KindModels)
    assert set(b.model.models) == {"single_cell", "field"}
    assert all(isinstance(m, AllModel) for m in b.model.models.values())


def test_old_module_names_are_mapped_and_a_current_payload_is_left_alone(tiny_bundle, tmp_path):
    with zipfile.ZipFile(tiny_bundle) as zf:
        current = zf.read(MEMBER)
    assert current_type_names(current) is current  # nothing to map: no copy made
    old = _rename_modules(current, {new: old for old, new in LEGACY_MODULES.items()})
    assert '"trainer.model"' in _schema(old)
    mapped = _schema(current_type_names(old))
    assert not any(f'"{name}"' in mapped for name in LEGACY_MODULES)

    legacy = load_bundle(_with_model(tiny_bundle, tmp_path / "legacy.allmodel", old))
    today = load_bundle(tiny_bundle)
    assert legacy.model.keys() == today.model.keys()
    for key in today.model.keys():
        a, b = legacy.model.models[key], today.model.models[key]
        assert type(a) is type(b) and a.threshold_ == b.threshold_


def test_mapping_old_names_does_not_widen_what_is_trusted(tiny_bundle, tmp_path):
    with zipfile.ZipFile(tiny_bundle) as zf:
        current = zf.read(MEMBER)
    foreign = _rename_modules(current, {"trainer.classical.model": "trainer.elsewhere"})
    with pytest.raises(BundleError, match="object types allgui does not load"):
        load_bundle(_with_model(tiny_bundle, tmp_path / "foreign.allmodel", foreign))


def _class_renamed(skops_bytes: bytes, old: str, new: str) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(skops_bytes)) as zin, zipfile.ZipFile(buf, "w") as zout:
        for info in zin.infolist():
            data = zin.read(info)
            if info.filename == "schema.json":
                data = data.decode().replace(f'"__class__": "{old}"', f'"__class__": "{new}"').encode()
            zout.writestr(info.filename, data)
    return buf.getvalue()


def test_a_scikit_learn_estimator_allgui_never_writes_is_refused(tiny_bundle, tmp_path):
    # NuSVC in place of the SVC inside the calibrated SVM: a real scikit-learn estimator, but not one of
    # those allgui writes; checked in a fresh process that first loads a model as the app does
    with zipfile.ZipFile(tiny_bundle) as zf:
        nu = _class_renamed(zf.read(MEMBER), "SVC", "NuSVC")
    odd = _with_model(tiny_bundle, tmp_path / "nusvc.allmodel", nu)
    code = (
        "import sys\n"
        "from allgui.window.analysis import load_predictor\n"
        f"load_predictor({str(tiny_bundle)!r}, None, None, None, warm=False)\n"  # the app's model load
        "print('after the app loaded a model:', sorted(m for m in ('sklearn', 'skops.io') if m in sys.modules))\n"
        "from trainer.inference.bundle import load_bundle\n"
        "from trainer.util.errors import BundleError\n"
        "try:\n"
        f"    load_bundle({str(odd)!r})\n"
        "except BundleError as e:\n"
        "    print('refused:', e)\n"
        "print('all of scikit-learn:', 'sklearn.gaussian_process' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "refused:" in out and "NuSVC" in out and "does not load" in out
    # the app's load rebuilt its models with skops, which was shown only allgui's estimators
    assert "after the app loaded a model: ['sklearn', 'skops.io']" in out and "all of scikit-learn: False" in out
