"""The CNN's threads follow the free CPUs, as the CRF calls' do (a busy machine makes many threads slow)."""

from __future__ import annotations

import torch

import crfrnn._utils.threads as threads_module
from crfrnn.workflow import TrainConfig, train
from crfrnn.workflow._distributed import DistInfo, thread_ceiling, threads_for_now

TINY = dict(num_train=4, num_val=0, image_size=32, crop_size=32, batch_size=4, model_kwargs={"width": 4}, epochs=2)


def test_ceiling_is_none_when_the_threads_are_fixed():
    assert thread_ceiling(3, None) is None
    assert thread_ceiling(None, DistInfo(rank=0, world_size=2)) is None
    assert 1 <= thread_ceiling(None, None) <= torch.get_num_threads()


def test_threads_for_now_takes_the_free_cpus_up_to_the_ceiling(monkeypatch):
    before = torch.get_num_threads()
    try:
        monkeypatch.setattr(threads_module, "free_cpus", lambda: 1)
        assert threads_for_now(4) == 1
        monkeypatch.setattr(threads_module, "free_cpus", lambda: 64)
        assert threads_for_now(2) == 2  # never above the ceiling
        assert threads_for_now(None) == 2  # None leaves them
    finally:
        torch.set_num_threads(before)


def test_training_follows_a_busy_machine_and_restores_the_threads(tmp_path, monkeypatch):
    before = torch.get_num_threads()
    seen: list[int] = []
    monkeypatch.setattr(threads_module, "free_cpus", lambda: 1)
    from crfrnn.workflow import _loop

    building: list[int] = []
    build = _loop.build_datasets
    monkeypatch.setattr(_loop, "build_datasets", lambda c: (building.append(torch.get_num_threads()), build(c))[1])
    config = TrainConfig(out_dir=str(tmp_path / "run"), **TINY)
    train(config, progress=False, on_epoch=lambda record: seen.append(torch.get_num_threads()))
    assert seen == [1, 1]
    assert building == [1]  # the data and the model are built on the free CPUs too, not only the epochs
    assert torch.get_num_threads() == before
    fixed: list[int] = []
    config = TrainConfig(out_dir=str(tmp_path / "fixed"), threads=before, **TINY)
    train(config, progress=False, on_epoch=lambda record: fixed.append(torch.get_num_threads()))
    assert fixed == [before, before]  # --threads N is kept whatever the load
