import torch

from camwidgets.datasets.train_demo import train
from camwidgets.models import DemoNet


def test_training_is_bitwise_deterministic_and_restores_global_state():
    threads = torch.get_num_threads()
    a = train(epochs=1, n_train=48, n_multi=16, batch_size=16, threads=1, log=False)
    b = train(epochs=1, n_train=48, n_multi=16, batch_size=16, threads=1, log=False)
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not a.training
    # and it did train: batch-norm statistics moved off their initial zeros
    assert torch.count_nonzero(DemoNet().state_dict()["bn1.running_mean"]) == 0
    assert torch.count_nonzero(sa["bn1.running_mean"]) > 0
    assert torch.get_num_threads() == threads
    assert not torch.are_deterministic_algorithms_enabled()
