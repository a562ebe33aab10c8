"""One model, two threads: the core's passes take turns; long loops stop at checkpoints.

The explorer runs its map worker and its metrics worker on one model. Forward hooks are
per module, not per thread, and ``training`` flags are per model: without the model's lock
one thread's hooks saw the other's forward passes (the capture then refused the layer as
"ran more than once", or recorded the wrong tensor), and a thread could restore the other's
"eval" as the model's own mode.
"""

from __future__ import annotations

import threading

import pytest
import torch
from torch import nn

from camwidgets.core import Cancelled, cancel_when, capture, model_lock
from camwidgets.core import metrics as M
from camwidgets.core._hooks import batch_logits, checkpoint
from camwidgets.core.region import ablationcam_weights, scorecam_weights

from .conftest import ForwardCounter

pytestmark = pytest.mark.usefixtures("single_thread")


def _bn_net() -> nn.Module:
    """Conv + BatchNorm + ReLU twice, GAP, linear: BatchNorm makes a wrong mode visible."""
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 5),
    )
    with torch.no_grad():  # non-trivial running statistics
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    return net


def _run_together(*jobs, rounds: int) -> list[BaseException]:
    """Run each job ``rounds`` times on its own thread, all threads released at once."""
    errors: list[BaseException] = []
    start = threading.Barrier(len(jobs))

    def loop(job):
        start.wait()
        try:
            for _ in range(rounds):
                job()
        except BaseException as err:  # collected for the assertion
            errors.append(err)

    threads = [threading.Thread(target=loop, args=(job,)) for job in jobs]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not any(t.is_alive() for t in threads), "a thread did not finish"
    return errors


def test_captures_and_plain_passes_on_two_threads_take_turns():
    net = _bn_net().train()  # a user's model left in training mode
    state = {k: v.clone() for k, v in net.state_dict().items()}
    layers = ["1", "4"]
    xa, xb = torch.rand(2, 3, 16, 16), torch.rand(3, 3, 16, 16)
    ref = capture(net, xa, layers, target=[1, 2])
    ref_logits = batch_logits(net, xb)
    got: list = []

    def hooked():
        c = capture(net, xa, layers, target=[1, 2])
        got.append(c)

    def plain():
        out = batch_logits(net, xb)
        assert torch.equal(out, ref_logits), "the other thread's hooks or mode reached this pass"

    errors = _run_together(hooked, plain, rounds=40)
    assert not errors, errors[:3]
    for c in got:
        for n in layers:
            assert torch.equal(c.activations[n], ref.activations[n])
            assert torch.equal(c.gradients[n], ref.gradients[n])
    # the model is as the user left it: training mode everywhere, statistics untouched
    assert all(m.training for m in net.modules())
    for k, v in net.state_dict().items():
        assert torch.equal(v, state[k]), k


def test_ablation_hook_never_reaches_another_threads_passes():
    net = _bn_net().eval()
    x = torch.rand(1, 3, 16, 16)
    act = capture(net, x, ["4"], target=3).activations["4"][0]
    score = float(batch_logits(net, x)[0, 3])
    ref_w = ablationcam_weights(net, x, "4", act, 3, score, batch_size=3).weights
    xb = torch.rand(2, 3, 16, 16)
    ref_logits = batch_logits(net, xb)

    def ablate():
        w = ablationcam_weights(net, x, "4", act, 3, score, batch_size=3).weights
        assert torch.equal(w, ref_w)

    def plain():
        assert torch.equal(batch_logits(net, xb), ref_logits), "an ablated channel reached this pass"

    errors = _run_together(ablate, plain, rounds=25)
    assert not errors, errors[:3]
    assert all(not m._forward_hooks for m in net.modules())


def test_the_lock_is_per_model_and_reentrant():
    a, b = _bn_net(), _bn_net()
    assert model_lock(a) is model_lock(a) and model_lock(a) is not model_lock(b)
    with model_lock(a), model_lock(a):  # the core nests eval_mode inside forward_hooks' lock
        batch_logits(a, torch.rand(1, 3, 8, 8))
    # held by this thread, another thread waits; released, it gets it
    seen = []

    def other():
        lock = model_lock(a)
        seen.append(lock.acquire(timeout=0.2))
        if seen[-1]:
            lock.release()

    with model_lock(a):
        t = threading.Thread(target=other)
        t.start()
        t.join()
    t = threading.Thread(target=other)
    t.start()
    t.join()
    assert seen == [False, True]


def test_cancel_when_stops_scorecam_at_the_next_batch():
    net = _bn_net().train()
    x = torch.rand(1, 3, 16, 16)
    act = capture(net, x, ["4"], target=0).activations["4"][0]  # 8 channels
    counter = ForwardCounter(net)
    try:
        # true from the start: not a single pass
        with cancel_when(lambda: True), pytest.raises(Cancelled):
            scorecam_weights(net, x, act, 0, batch_size=2, skip_zero=False)
        assert counter.calls == 0
        # true once two batches ran: exactly two passes, then it stops
        with cancel_when(lambda: counter.calls >= 2), pytest.raises(Cancelled):
            scorecam_weights(net, x, act, 0, batch_size=2, skip_zero=False)
        assert counter.calls == 2
        # outside the block the predicate is gone: all 4 batches run
        counter.calls = 0
        scorecam_weights(net, x, act, 0, batch_size=2, skip_zero=False)
        assert counter.calls == 4
    finally:
        counter.remove()
    assert all(m.training for m in net.modules())
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in net.modules())


def test_cancel_when_stops_a_metric_curve_and_nests():
    net = _bn_net().eval()
    image = torch.rand(3, 16, 16)
    saliency = torch.rand(16, 16)
    counter = ForwardCounter(net)
    outer_fired = []
    try:
        with cancel_when(lambda: bool(outer_fired)):
            with cancel_when(lambda: counter.calls >= 3), pytest.raises(Cancelled):
                M.insertion(net, image, saliency, target=1, steps=20, batch_size=4)
            assert counter.calls == 3
            outer_fired.append(True)
            with pytest.raises(Cancelled):  # the outer block's predicate still counts
                checkpoint()
        checkpoint()  # and nothing is left once both blocks are closed
    finally:
        counter.remove()
