import pytest
import torch

from camwidgets.datasets import Shapes
from camwidgets.datasets.train_demo import evaluate_pairs, pair_target, train
from camwidgets.models import DemoNet


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_training_is_bitwise_deterministic_and_restores_global_state(precision):
    threads = torch.get_num_threads()
    kw = dict(epochs=1, n_train=32, n_multi=16, n_pair=16, batch_size=16, threads=1, precision=precision,
              log=False)
    a, b = train(**kw), train(**kw)
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not a.training
    # and it did train: batch-norm statistics moved off their initial zeros
    assert torch.count_nonzero(DemoNet().state_dict()["bn1.running_mean"]) == 0
    assert torch.count_nonzero(sa["bn1.running_mean"]) > 0
    assert torch.get_num_threads() == threads
    assert not torch.are_deterministic_algorithms_enabled()


def test_pair_targets_split_between_the_two_classes_larger_first():
    single = Shapes(1, seed=16)[0]
    t = pair_target(single)
    assert t.sum() == 1 and t[single["label"]] == 1
    for item in Shapes(10, seed=16, scene="pair"):
        t = pair_target(item)
        big, small = item["labels"]
        assert float(t.sum()) == pytest.approx(1.0)
        assert 0.5 <= float(t[big]) <= 0.75 and float(t[small]) >= 0.25
        assert float(t[big] + t[small]) == pytest.approx(1.0)
        share = item["masks"][big].sum() / (item["masks"][big].sum() + item["masks"][small].sum())
        assert float(t[big]) == pytest.approx((0.5 + share) / 2, abs=1e-6)


def test_evaluate_pairs_needs_pairs():
    with pytest.raises(ValueError, match="pair"):
        evaluate_pairs(DemoNet().eval(), Shapes(2, seed=16))
