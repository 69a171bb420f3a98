"""Networks side by side on the CPU: each in its own lane on its share of torch's threads, same features."""
from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from trainer.io.synthetic import make_cell_image
from trainer.vision.features import FeatureExtractor

SIZE = 32


@pytest.fixture
def two_threads():
    """The calling thread on two torch threads (as on a 2-core machine), put back afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def extractor(backbones=("densenet121", "resnet34")) -> FeatureExtractor:
    return FeatureExtractor(backbones=backbones, image_size=SIZE, num_workers=0, device="cpu", precision="fp32")


def record_threads(ex: FeatureExtractor) -> list[tuple[str, str, int]]:
    """(network, thread name, torch threads) of every forward pass of ``ex``'s networks, as they run."""
    seen: list[tuple[str, str, int]] = []
    for name, model in ex.models().items():
        model.register_forward_hook(lambda m, i, o, name=name: seen.append(
            (name, threading.current_thread().name, torch.get_num_threads())))
    return seen


def images(n: int = 3) -> list[np.ndarray]:
    rng = np.random.default_rng(1)
    return [make_cell_image(48, malignant=bool(i % 2), rng=rng)[0] for i in range(n)]


def test_two_networks_run_in_two_lanes_on_one_thread_each_and_the_caller_keeps_its_threads(two_threads):
    ex = extractor()
    seen = record_threads(ex)
    out = ex.extract(images())
    assert {k: v.shape for k, v in out.items()} == {"densenet121": (3, 1024), "resnet34": (3, 512)}
    assert sorted(n for n, _, _ in seen) == ["densenet121", "resnet34"]
    lanes = {thread for _, thread, _ in seen}
    assert len(lanes) == 2 and all(t.startswith("allgui-lane") for t in lanes)
    assert [threads for _, _, threads in seen] == [1, 1]
    # the caller, and a thread started afterwards, still compute on two threads
    assert torch.get_num_threads() == 2
    later: list[int] = []
    t = threading.Thread(target=lambda: later.append(torch.get_num_threads()))
    t.start()
    t.join()
    assert later == [2]


def test_side_by_side_features_equal_those_computed_one_after_the_other(two_threads):
    ex = extractor()
    imgs = images()
    side_by_side = ex.extract(imgs)
    torch.set_num_threads(1)            # one thread: no lanes, the networks run in the calling thread
    seen = record_threads(ex)
    one_after_the_other = ex.extract(imgs)
    assert {thread for _, thread, _ in seen} == {threading.current_thread().name}
    for name in side_by_side:           # the same numbers up to float32 summation order
        np.testing.assert_allclose(side_by_side[name], one_after_the_other[name], rtol=0, atol=1e-5)


def test_one_network_keeps_all_threads_in_the_calling_thread(two_threads):
    ex = extractor(("resnet34",))
    seen = record_threads(ex)
    ex.extract(images(1))
    assert seen == [("resnet34", threading.current_thread().name, 2)]


def test_a_failing_network_is_raised_after_the_other_lane_is_done(two_threads):
    ex = extractor()
    finished: list[str] = []
    models = ex.models()
    models["resnet34"].register_forward_hook(lambda *a: finished.append("resnet34"))

    def boom(module, inputs):
        raise RuntimeError("out of memory in densenet121")

    models["densenet121"].register_forward_pre_hook(boom)
    with pytest.raises(RuntimeError, match="densenet121"):
        ex.extract(images(1))
    assert finished == ["resnet34"]


def test_freed_memory_is_given_back_between_forward_batches_but_not_after_a_single_one(two_threads, monkeypatch):
    """The lanes' allocators keep a batch's activations; a predictor's extraction of many batches gives them back."""
    import trainer.vision.features as features

    ex = extractor()
    ex.batch_size, ex.release_memory = 2, True  # as a predictor's extractors are
    batches = record_threads(ex)
    trims: list[int] = []
    monkeypatch.setattr(features, "release_freed_memory", lambda: trims.append(len(batches)))
    ex.extract(images(5))                 # batches of 2, 2, 1, both networks each
    assert trims == [2, 4, 6]
    trims.clear()
    ex.extract(images(2)[::-1])           # one batch (an opened image): its caller trims when it likes
    assert trims == []


def test_a_predictors_extractors_give_memory_back_and_trainings_do_not(tiny_predictor):
    assert all(ex.release_memory for ex in tiny_predictor.extractors.values())
    assert not extractor().release_memory


@pytest.mark.skipif(not hasattr(__import__("os"), "fork"), reason="fork is POSIX")
def test_a_forked_child_gets_lanes_of_its_own(two_threads):
    """A child forked after the lanes started (a DataLoader worker, a library's pool) has none of their
    threads; work it gives its lanes must still run, not wait forever."""
    import os

    from trainer.util.threads import network_lanes

    assert network_lanes(2, 1).submit(lambda: 7).result(timeout=30) == 7
    pid = os.fork()
    if pid == 0:  # the child: exit status 0 only if its lanes ran the work
        ok = False
        try:
            ok = network_lanes(2, 1).submit(lambda: 7).result(timeout=20) == 7
        finally:
            os._exit(0 if ok else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
