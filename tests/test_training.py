"""The shared training loop: checkpoints without pickle, deterministic sampler, schedule, exact resume."""

import json

import pytest
import torch
from torch import nn
from torch.utils.data import Dataset

from vivitcache.config import OptimConfig, RunConfig
from vivitcache.training.checkpoint import CheckpointError, load_model_state, load_train_state, save_checkpoint
from vivitcache.training.loop import Spec, Task, evaluate, fit, fit_many
from vivitcache.training.schedule import warmup_cosine
from vivitcache.training.metrics import topk_correct
from vivitcache.training.sampler import ResumableSampler
from vivitcache.training.state import ResumeWorldSizeError, TrainState


class Blobs(Dataset):
    """Linearly separable points; `crash_at=(epoch, index)` raises once there (a simulated kill)."""

    def __init__(self, n=64, views=None, crash_at=None, seed=0):
        g = torch.Generator().manual_seed(seed)
        self.y = torch.arange(n) % 3
        self.x = torch.randn(n, 4, generator=g) + 4 * nn.functional.one_hot(self.y, 4).float()
        self.views, self.crash_at, self.epoch = views, crash_at, 0

    def set_epoch(self, epoch):
        self.epoch = epoch

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        if (self.epoch, i) == self.crash_at:
            self.crash_at = None
            raise RuntimeError("simulated crash")
        x = self.x[i] if self.views is None else self.x[i].expand(self.views, -1)
        return x, self.y[i]


def _task(crash_at=None):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 16), nn.Dropout(0.2), nn.GELU(), nn.Linear(16, 3))
    return Task(
        model=model, forward=lambda m, x: m(x), train_set=Blobs(crash_at=crash_at), val_set=Blobs(32, views=2, seed=1),
        num_classes=3, config={"run": {"resume": False}, "what": "blobs"}, title="blobs",
    )


OPTIM = OptimConfig(epochs=3, batch_size=8, lr=1e-2, warmup_epochs=0.5)


def test_fit_writes_run_folder_and_learns(tmp_path):
    summary = fit(_task(), OPTIM, RunConfig(out=str(tmp_path), log_every=1))
    assert summary["val_top1"] > 0.9
    for name in ("summary.json", "metrics.jsonl", "curves.png", "confusion.json", "checkpoint/model.safetensors"):
        assert (tmp_path / name).is_file(), name
    on_disk = json.loads((tmp_path / "summary.json").read_text())
    assert {"val_top1", "val_top5", "epochs", "seconds", "peak_memory_bytes"} <= set(on_disk)
    assert on_disk["peak_memory_bytes"] > 0
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").open()]
    assert [r["epoch"] for r in rows if r["kind"] == "eval"] == [1, 2, 3]
    assert sum(r["kind"] == "train" for r in rows) == 3 * 64 // 8


def test_resume_after_crash_is_bitwise_identical(tmp_path):
    fit(_task(), OPTIM, RunConfig(out=str(tmp_path / "a"), checkpoint_every=3))
    crashed = _task(crash_at=None)
    # crash in epoch 2, after the step-9 checkpoint: the sampler order of epoch 1 (0-based) is known
    sampler = ResumableSampler(64, seed=0, shuffle=True)
    sampler.set_epoch(1)
    order = list(sampler)
    crashed.train_set.crash_at = (1, order[8 * 2 + 3])  # inside epoch 2, step 3 (> the checkpoint at global step 9)
    run = RunConfig(out=str(tmp_path / "b"), checkpoint_every=3)
    with pytest.raises(RuntimeError, match="simulated crash"):
        fit(crashed, OPTIM, run)
    state = json.loads((tmp_path / "b/checkpoint/state.json").read_text())
    assert (state["epoch"], state["step_in_epoch"]) == (1, 1)
    resumed = _task()
    fit(resumed, OPTIM, RunConfig(out=str(tmp_path / "b"), checkpoint_every=3, resume=True))
    a, b = load_model_state(tmp_path / "a"), load_model_state(tmp_path / "b")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert (tmp_path / "a/metrics.jsonl").read_text().count("\n") == (tmp_path / "b/metrics.jsonl").read_text().count("\n")


def test_resume_refuses_other_config_and_missing_checkpoint(tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint"):
        fit(_task(), OPTIM, RunConfig(out=str(tmp_path), resume=True))
    fit(_task(), OptimConfig(epochs=1, batch_size=8), RunConfig(out=str(tmp_path)))
    other = _task()
    other.config = {"run": {"resume": False}, "what": "else"}
    with pytest.raises(CheckpointError, match="different config"):
        fit(other, OptimConfig(epochs=1, batch_size=8), RunConfig(out=str(tmp_path), resume=True))


def test_checkpoint_round_trip_restores_optimizer_and_rng(tmp_path):
    model = nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    torch.manual_seed(0)  # this test is about the global RNG: seeded, then saved and restored by the checkpoint
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    save_checkpoint(tmp_path, model.state_dict(), {"x": 1}, opt, {"epoch": 2})
    expected_next = torch.rand(3)
    torch.rand(5)  # move the RNG on
    opt2 = torch.optim.AdamW(nn.Linear(3, 2).parameters(), lr=0.1)
    state = load_train_state(tmp_path, opt2)
    assert state["epoch"] == 2
    assert torch.equal(torch.rand(3), expected_next)
    for a, b in zip(opt.state_dict()["state"].values(), opt2.state_dict()["state"].values()):
        assert all(torch.equal(a[k], b[k]) for k in ("exp_avg", "exp_avg_sq"))
    assert not any(p.suffix == ".pt" for p in (tmp_path / "checkpoint").iterdir())  # no pickle files


def test_sampler_is_deterministic_resumable_and_splits_ranks():
    s = ResumableSampler(10, seed=3, shuffle=True)
    s.set_epoch(1)
    full = list(s)
    s.set_epoch(1, skip=4)
    assert list(s) == full[4:]
    s.set_epoch(2)
    assert sorted(list(s)) == sorted(full) and list(s) != full
    ranks = [list(ResumableSampler(10, 3, True, rank=r, world=2)) for r in range(2)]
    assert len(ranks[0]) == len(ranks[1]) == 5 and sorted(ranks[0] + ranks[1]) == list(range(10))
    ev = [list(ResumableSampler(5, 0, False, rank=r, world=2, drop_last=False)) for r in range(2)]
    assert sorted(ev[0] + ev[1]) == list(range(5))  # eval: nothing dropped, nothing doubled


def test_warmup_cosine_schedule_shape():
    f = warmup_cosine(total_steps=100, warmup_steps=10, lr=1.0, min_lr=0.01)
    assert f(0) == pytest.approx(0.1) and f(9) == pytest.approx(1.0)
    assert f(10) == pytest.approx(1.0) and f(99) == pytest.approx(0.01, abs=1e-3)
    assert all(f(i) >= f(i + 1) for i in range(10, 99))


def test_topk_and_view_averaged_eval():
    logits = torch.tensor([[0.1, 0.9, 0.0], [0.8, 0.1, 0.1]])
    assert topk_correct(logits, torch.tensor([1, 2]), ks=(1, 2)) == [1, 1]
    model = nn.Linear(4, 3)
    res = evaluate(model, lambda m, x: m(x), Blobs(12, views=3), 3, torch.device("cpu"), batch_size=5)
    assert res["val_videos"] == 12 and sum(map(sum, res["confusion"])) == 12


def _rewrite_state(run_dir, **changes):
    path = run_dir / "checkpoint/state.json"
    state = json.loads(path.read_text())
    path.write_text(json.dumps({**state, **changes}))


def test_resume_on_another_world_size_is_refused_mid_epoch_and_allowed_at_an_epoch_end(tmp_path):
    # a mid-epoch checkpoint says which samples of the epoch were dealt over its world size: refused elsewhere
    fit(_task(), OptimConfig(epochs=1, batch_size=8), RunConfig(out=str(tmp_path / "mid"), checkpoint_every=3))
    _rewrite_state(tmp_path / "mid", world_size=2, epoch=0, step_in_epoch=3, step=3)
    with pytest.raises(ResumeWorldSizeError, match=r"3 steps into epoch 1 with 2 process\(es\), and this run has 1"):
        fit(_task(), OptimConfig(epochs=1, batch_size=8), RunConfig(out=str(tmp_path / "mid"), resume=True))
    # at an epoch end nothing of the next epoch is seen yet: any world size continues, and it is recorded
    fit(_task(), OptimConfig(epochs=1, batch_size=8), RunConfig(out=str(tmp_path / "end")))
    _rewrite_state(tmp_path / "end", world_size=2)
    summary = fit(_task(), OptimConfig(epochs=2, batch_size=8), RunConfig(out=str(tmp_path / "end"), resume=True))
    assert summary["steps"] == 16  # the second epoch trained, on this run's one process, which is recorded
    assert json.loads((tmp_path / "end/checkpoint/state.json").read_text())["world_size"] == 1


def test_train_state_round_trips_and_keeps_the_best_eval():
    state = TrainState(world_size=1)
    for top1 in (0.5, 0.75, 0.6):
        state.record_eval({"val_top1": top1})
        state.finish_epoch()
    loaded = TrainState()
    loaded.load_state_dict({**state.state_dict(), "scheduler": {"ignored": True}})
    assert loaded == state and (loaded.best_val_top1, loaded.epoch, loaded.last_eval) == (0.75, 3, {"val_top1": 0.6})


def test_fit_many_gives_each_model_what_fit_gives_it_alone(tmp_path):
    # two models with other learning rates on one stream of batches: each equals its own run bit for bit, even
    # though dropout draws from the RNG (each member has its own stream)
    fast, slow = OPTIM, OptimConfig(epochs=2, batch_size=8, lr=3e-3, warmup_epochs=0.5)
    alone = [fit(_task(), optim, RunConfig(out=str(tmp_path / f"alone{i}"))) for i, optim in enumerate((fast, slow))]
    shared = _task()
    tasks = [shared, _task()]
    tasks[1].train_set, tasks[1].val_set = shared.train_set, shared.val_set
    together = fit_many([Spec(t, o, tmp_path / f"many{i}") for i, (t, o) in enumerate(zip(tasks, (fast, slow)))],
                        RunConfig(out=str(tmp_path)))
    for i in range(2):
        a, b = load_model_state(tmp_path / f"alone{i}"), load_model_state(tmp_path / f"many{i}")
        assert all(torch.equal(a[k], b[k]) for k in a)
        assert together[i]["val_top1"] == alone[i]["val_top1"] and together[i]["steps"] == alone[i]["steps"]
