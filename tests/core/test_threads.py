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

    threads = [threading.Thread(target=loop, args=(job,), daemon=True) for job in jobs]  # a deadlock fails, never hangs
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not any(t.is_alive() for t in threads), "a thread did not finish"
    return errors


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_captures_and_plain_passes_on_two_threads_take_turns(mode):
    net = _bn_net().train(mode == "train")  # train: a user's model left in training mode
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

    errors = _run_together(hooked, plain, rounds=150)
    assert not errors, errors[:3]
    for c in got:
        for n in layers:
            assert torch.equal(c.activations[n], ref.activations[n])
            assert torch.equal(c.gradients[n], ref.gradients[n])
    # the model is as the user left it: its modes, its statistics
    assert all(m.training == (mode == "train") for m in net.modules())
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

    errors = _run_together(ablate, plain, rounds=150)
    assert not errors, errors[:3]
    assert all(not m._forward_hooks for m in net.modules())


class _Pause(nn.Module):
    """Identity that, for the thread named in ``hold``, signals ``entered`` and waits for ``go``."""

    def __init__(self) -> None:
        super().__init__()
        self.hold: int | None = None
        self.entered, self.go = threading.Event(), threading.Event()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if threading.get_ident() == self.hold:
            self.entered.set()
            assert self.go.wait(20), "never released"
        return x


def _paused_net() -> tuple[nn.Module, _Pause]:
    pause = _Pause()
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), pause, nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                        nn.Linear(4, 3))
    return net.eval(), pause


def _start_paused(pause: _Pause, job) -> threading.Thread:
    """Run ``job`` on a thread that stops inside the model's forward until ``pause.go`` is set."""
    def run():
        pause.hold = threading.get_ident()
        job()

    t = threading.Thread(target=run, daemon=True)
    t.start()
    assert pause.entered.wait(20)
    return t


_late: list[threading.Thread] = []


def _finishes(job, timeout: float) -> bool:
    """True if ``job`` finishes within ``timeout`` on a thread of its own (a job that did not is
    joined by :func:`_join_late` later)."""
    t = threading.Thread(target=job, daemon=True)
    t.start()
    t.join(timeout)
    if t.is_alive():
        _late.append(t)
        return False
    return True


def _join_late() -> None:
    """Wait for the jobs that were still waiting: they run once the gate is free."""
    while _late:
        t = _late.pop()
        t.join(20)
        assert not t.is_alive(), "a waiting pass never ran"


def _other_pass_finishes(net: nn.Module, pause: _Pause, job, timeout: float) -> bool:
    """While ``job`` is paused inside the model's forward on one thread, does a plain pass of
    another thread finish within ``timeout``? (Everything is joined before returning.)"""
    x = torch.rand(1, 3, 8, 8)
    a = _start_paused(pause, job)
    try:
        return _finishes(lambda: batch_logits(net, x), timeout)
    finally:
        pause.go.set()
        a.join(20)
        _join_late()


def test_plain_passes_of_an_eval_model_run_side_by_side():
    net, pause = _paused_net()
    x = torch.rand(1, 3, 8, 8)
    assert _other_pass_finishes(net, pause, lambda: batch_logits(net, x), 20)


def test_hooks_and_mode_changes_exclude_other_threads_passes():
    x = torch.rand(1, 3, 8, 8)
    # a capture (hooks registered) in flight: another thread's plain pass waits for it
    net, pause = _paused_net()
    assert not _other_pass_finishes(net, pause, lambda: capture(net, x, ["0"], target=0), 0.5)
    # a model left in train mode: the pass that puts it in eval mode excludes the others
    net, pause = _paused_net()
    net.train()
    assert not _other_pass_finishes(net, pause, lambda: batch_logits(net, x), 0.5)
    assert all(m.training for m in net.modules())
    # model_lock: the same for code of the user's own
    net, pause = _paused_net()
    held, done = threading.Event(), threading.Event()

    def user():
        with model_lock(net):
            held.set()
            done.wait(20)

    u = threading.Thread(target=user, daemon=True)
    u.start()
    assert held.wait(20)
    try:
        assert not _finishes(lambda: batch_logits(net, x), 0.5)
    finally:
        done.set()
        u.join(20)
    _join_late()


def test_exclusive_inside_shared_on_two_threads_does_not_deadlock():
    # ADCC re-explains (a capture: exclusive) inside its own eval_mode block (shared); two
    # threads doing so at once must both finish.
    from camwidgets.core._hooks import eval_mode

    net = _bn_net().eval()
    x = torch.rand(1, 3, 16, 16)
    ref = capture(net, x, ["4"], target=1).activations["4"]
    both_inside = threading.Barrier(2)

    def job():
        with eval_mode(net):
            both_inside.wait(20)  # both threads hold the gate shared here
            c = capture(net, x, ["4"], target=1)
            assert torch.equal(c.activations["4"], ref)
            with model_lock(net), model_lock(net), eval_mode(net):  # re-entrant
                batch_logits(net, x)

    errors = _run_together(job, job, rounds=1)
    assert not errors, errors


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
