"""Model bundles: one zip file holding a fitted model, its config, model card and arrays.

Layout (format ``allgui-model``, version 3)::

    manifest.json          format, version, config, model card, metrics, versions, SHA-256 of members;
                           ``models``: per model key its member, threshold and feature blocks (a
                           ``readout`` flag that earlier versions wrote there is ignored)
    model-<key>.skops      one fitted :class:`trainer.classical.model.AllModel` per image kind (skops: no code
                           runs on load); ``load_bundle(lazy=True)`` rebuilds only the first until another
                           is asked for. Bundles of versions 1 and 2 hold one ``model.skops`` instead
                           (a KindModels, or one AllModel).
    arrays.safetensors     numpy arrays, per model key ``<key>/validation/...``, ``<key>/test/...``,
                           ``<key>/stain_reference``; ``probe64/<backbone>`` fingerprints; optional
                           explanation probes ``<key>/explain/<backbone>/{mean,scale,coef,intercept,reference}``
                           (plain float arrays, see :mod:`trainer.inference.explain`): bundles written before
                           them load and predict unchanged, they only cannot show heatmaps
    backbones.safetensors  optional backbone weights ("<backbone>/<param>"), e.g. fine-tuned ones

Version 1 bundles (one AllModel, arrays ``validation/...`` and ``test/...``) still load: they come
back as a KindModels with the single key ``"any"``. Versions 1 and 2 store the fingerprints at the model's
input size (``probe/<backbone>``, see :mod:`trainer.vision.fingerprint`); version 3 at a small input size,
so an allgui that reads only versions 1 and 2 refuses a newer bundle instead of skipping its check.

Loading never unpickles: skops reconstructs only skops' default-trusted types plus an explicit
allow-list (:mod:`.trust`, the one place a bundle's models are rebuilt), the base classifiers must be of
the five kinds allgui writes, and safetensors holds raw tensors. Every member's size and hash is checked
(:mod:`.archive`), so a truncated, altered or oversized file is refused with :class:`BundleError`.
Writes (:mod:`.write`) go to a temporary file in the target folder and are moved into place atomically.

The modules: :mod:`.format` (names and the in-memory bundle), :mod:`.archive` (reading and checking the
zip and its manifest), :mod:`.trust` (rebuilding a model against the allow-list), :mod:`.legacy` (older
names and formats), :mod:`.lazy` (what the manifest says of each model, models rebuilt when asked for),
:mod:`.load` and :mod:`.write`.
"""
from trainer.inference.bundle.archive import read_manifest
from trainer.inference.bundle.format import FORMAT, FORMAT_VERSION, READABLE_VERSIONS, SUFFIX, ModelBundle
from trainer.inference.bundle.lazy import LazyModels, model_summary
from trainer.inference.bundle.legacy import LEGACY_MODULES, current_type_names
from trainer.inference.bundle.load import load_bundle
from trainer.inference.bundle.write import package_versions, save_bundle

__all__ = [
    "FORMAT", "FORMAT_VERSION", "LEGACY_MODULES", "READABLE_VERSIONS", "SUFFIX", "LazyModels", "ModelBundle",
    "current_type_names", "load_bundle", "model_summary", "package_versions", "read_manifest", "save_bundle",
]
