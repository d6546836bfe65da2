"""`vivitcache sweep`: each config equals its own `train` run bit for bit, a kill -9 + `--resume` equals an
uninterrupted sweep, successive halving prunes by the recorded ranking, the grid (comma lists, TOML) expands as
documented, bad grids and too many configs for the memory are one error line.

Runs compared bit for bit are made in the same process with the same settings (same thread count, same kernels),
or each in a fresh process of the same script: equal by construction, so compared exactly.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from test_train_temporal import make_store
from vivitcache.cli import app
from vivitcache.errors import ConfigError
from vivitcache.sweep import OptionKinds, expand
from vivitcache.sweep.halving import rungs
from vivitcache.sweep.memory import activation_bytes, check_fits, state_bytes
from vivitcache.training.checkpoint import load_model_state

runner = CliRunner()
TINY = ["--frames", "8", "--batch-size", "4", "--temporal-heads", "2", "--warmup-epochs", "0.5", "--device", "cpu",
        "--eval-views", "1"]
KINDS = OptionKinds(flags=frozenset({"--in-memory", "--no-adapter", "--freeze-temporal"}),
                    valued=frozenset({"--lr", "--weight-decay", "--adapter", "--temporal-depth", "--init-parts",
                                      "--store", "--frames"}))


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return make_store(tmp_path_factory.mktemp("sweep") / "tokens.zarr", "any", per_class=5)


def _sweep(out, *args):
    return runner.invoke(app, ["sweep", "--out", str(out), *args], terminal_width=200)


def _rows(folder: Path, kind: str = "eval") -> list[dict]:
    skip = ("clips_per_s", "frames_per_s", "seconds")  # timings differ run to run
    return [{k: v for k, v in json.loads(line).items() if k not in skip}
            for line in (folder / "metrics.jsonl").open() if json.loads(line)["kind"] == kind]


def _same_weights(a: Path, b: Path) -> bool:
    x, y = load_model_state(a), load_model_state(b)
    return x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)


def test_each_config_equals_its_own_train_run(store, tmp_path):
    out = tmp_path / "sweep"
    result = _sweep(out, "--store", str(store), *TINY, "--epochs", "2", "--lr", "3e-3,1e-2",
                    "--temporal-depth", "1,2", "--drop-rate", "0.1")
    assert result.exit_code == 0, result.output
    report = json.loads((out / "sweep.json").read_text())
    names = sorted(r["name"] for r in report["configs"])
    assert names == ["c00-lr3e-3-temporal-depth1", "c01-lr3e-3-temporal-depth2", "c02-lr1e-2-temporal-depth1",
                     "c03-lr1e-2-temporal-depth2"]
    assert report["groups"] == 1 and report["best"] == report["configs"][0]["name"]
    tops = [r["val_top1"] for r in report["configs"]]
    assert tops == sorted(tops, reverse=True)
    md = (out / "sweep.md").read_text()
    assert f"| **best** | {report['best']} |" in md and (out / "sweep.png").stat().st_size > 0
    for row in report["configs"]:
        if row["name"] not in ("c00-lr3e-3-temporal-depth1", "c03-lr1e-2-temporal-depth2"):
            continue
        # its command, run alone (dropout on: each config's RNG stream must be its own run's)
        alone = tmp_path / f"alone-{row['name']}"
        args = row["command"].split()[2:]
        args[args.index("--out") + 1] = str(alone)
        single = runner.invoke(app, ["train", *args])
        assert single.exit_code == 0, single.output
        assert _same_weights(out / "configs" / row["name"], alone)
        assert _rows(out / "configs" / row["name"]) == _rows(alone)
    # a config's folder is a normal stage-2 run folder
    folder = out / "configs" / report["best"]
    scored = runner.invoke(app, ["eval", "--store", str(store), "--checkpoint", str(folder)])
    assert scored.exit_code == 0, scored.output
    assert json.loads((folder / "eval.json").read_text())["val_top1"] == pytest.approx(report["configs"][0]["val_top1"])


_SCRIPT = """
import sys, time
from vivitcache.cli import app
from vivitcache.train_temporal.dataset import TokenClipDataset
if sys.argv[1] == "slow":  # slow each clip down so the parent can kill -9 us mid-sweep
    get = TokenClipDataset.__getitems__
    TokenClipDataset.__getitems__ = lambda self, i: (time.sleep(0.03 * len(i)), get(self, i))[1]
app(sys.argv[2:])
"""


def test_kill_9_and_resume_equals_an_uninterrupted_sweep(store, tmp_path):
    script = tmp_path / "sweep.py"
    script.write_text(_SCRIPT)
    grid = ["--store", str(store), *TINY, "--temporal-depth", "1", "--epochs", "2", "--lr", "3e-3,1e-2",
            "--drop-rate", "0.1", "--checkpoint-every", "2", "--prune", "halving"]
    run = lambda mode, out, *args: subprocess.run(  # noqa: E731
        [sys.executable, str(script), mode, "sweep", "--out", str(out), *args], cwd=tmp_path,
        capture_output=True, text=True)
    straight = run("fast", tmp_path / "straight", *grid)
    assert straight.returncode == 0, straight.stderr
    killed = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, str(script), "slow", "sweep", "--out", str(killed), *grid],
                            cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    states = [killed / "configs" / f"c0{i}-lr{lr}" / "checkpoint/state.json" for i, lr in enumerate(("3e-3", "1e-2"))]
    deadline = time.time() + 90
    while time.time() < deadline and proc.poll() is None:  # kill once the second config has a mid-epoch checkpoint
        if states[1].is_file() and json.loads(states[1].read_text())["step"] >= 2:
            break
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL and not (killed / "sweep.json").exists()
    resumed = run("fast", killed, "--resume")  # no grid: the sweep's manifest is read back
    assert resumed.returncode == 0, resumed.stderr
    a, b = (json.loads((d / "sweep.json").read_text()) for d in (tmp_path / "straight", killed))
    strip = lambda r: [{k: v for k, v in c.items() if k not in ("run_folder", "command")} for c in r["configs"]]  # noqa: E731
    assert strip(a) == strip(b)
    for row in a["configs"]:
        assert _same_weights(tmp_path / "straight/configs" / row["name"], killed / "configs" / row["name"])
        assert _rows(tmp_path / "straight/configs" / row["name"], "train") == _rows(killed / "configs" / row["name"], "train")


def test_halving_stops_the_worse_half_at_each_rung(store, tmp_path):
    assert rungs(8) == [1, 2, 4] and rungs(5) == [2, 3] and rungs(1) == []
    out = tmp_path / "sweep"
    result = _sweep(out, "--store", str(store), *TINY, "--temporal-depth", "1", "--epochs", "4", "--lr", "1e-4,3e-3,1e-2,3e-2",
                    "--prune", "halving")
    assert result.exit_code == 0, result.output
    report = json.loads((out / "sweep.json").read_text())
    history = {r["name"]: [(e["val_top1"], e["val_loss"]) for e in _rows(out / "configs" / r["name"])]
               for r in report["configs"]}
    order = sorted(history)  # config order = name order (c00, c01, ...)
    alive = list(order)
    for rung in (1, 2):  # rungs of 4 epochs: the better half (top-1, then loss, then order) goes on
        ranked = sorted(alive, key=lambda n: (-history[n][rung - 1][0], history[n][rung - 1][1], order.index(n)))
        alive = ranked[: (len(ranked) + 1) // 2]
        for name in ranked[len(alive):]:
            assert len(history[name]) == rung
    done = {r["name"]: r["epochs_done"] for r in report["configs"]}
    assert sorted(done.values()) == [1, 1, 2, 4] and done[alive[0]] == 4
    assert report["epochs_total"] == 16 and report["epochs_saved_by_pruning"] == 16 - 8
    stopped = {r["name"]: r["stopped"] for r in report["configs"]}
    assert stopped[alive[0]] is None and sorted(filter(None, stopped.values())) == [
        "pruned after epoch 1", "pruned after epoch 1", "pruned after epoch 2"]


def test_clip_lengths_run_as_separate_groups(store, tmp_path):
    result = _sweep(tmp_path / "s", "--store", str(store), *TINY[2:], "--temporal-depth", "1", "--epochs", "1",
                    "--frames", "6,8")
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "s/sweep.json").read_text())
    assert report["groups"] == 2 and {r["name"] for r in report["configs"]} == {"c00-frames6", "c01-frames8"}


def test_grid_file_and_command_line_multiply(tmp_path):
    grid = tmp_path / "grid.toml"
    grid.write_text('[grid]\nadapter = ["mlp", "linear"]\nin_memory = [true, false]\n\n'
                    '[[config]]\nlr = 1e-3\n\n[[config]]\nlr = 3e-3\ninit_parts = ["temporal", "head"]\n')
    configs = expand(["--store", "s.zarr", "--temporal-depth", "1,2"], grid, KINDS)
    assert len(configs) == 2 * 2 * 2 * 2 and len({c.name for c in configs}) == 16
    first = configs[0]
    assert first.args == ("--store", "s.zarr", "--temporal-depth", "1", "--lr", "0.001", "--adapter", "mlp",
                          "--in-memory")
    assert dict(first.varying) == {"--temporal-depth": "1", "--lr": "0.001", "--adapter": "mlp", "--in-memory": ""}
    assert ("--init-parts", "temporal,head") == configs[-1].args[6:8]  # a list value of a comma-list option, joined
    assert [c.args for c in expand(["--init-parts", "adapter,temporal"], None, KINDS)] == [
        ("--init-parts", "adapter,temporal")]  # never split on the command line


@pytest.mark.parametrize("args, grid, message", [
    (["--lrr", "1"], None, "--lrr: not an option of `vivitcache train`"),
    (["--out", "x"], None, "--out: a sweep sets it for every config"),
    (["--lr", "1e-3,"], None, "an empty value in the list"),
    (["--lr", "1e-3,1e-3"], None, "the same config twice"),
    (["--lr"], None, "--lr: needs a value"),
    (["--lr", "1e-3"], "lr = [2e-3]\n", "given twice"),
    ([], "[grid]\nlr = [\n", "--grid"),
    ([], "[grid]\nlr = []\n", "empty list"),
    ([], "[sweep]\nlr = 1\n", "unknown table(s) ['sweep']"),
    ([], "[grid]\nin_memory = ['yes']\n", "--in-memory: a flag"),
])
def test_bad_grids_are_one_error(tmp_path, args, grid, message):
    path = None
    if grid is not None:
        path = tmp_path / "g.toml"
        path.write_text(grid if grid.startswith("[") else "[grid]\n" + grid)
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
        expand(args, path, KINDS)


def test_cli_errors_are_one_line(store, tmp_path):
    cases = [
        (["--lr", "1e-3,2e-3"], "Missing option '--store'"),  # each config is parsed as `train` parses it
        (["--store", str(store), "--lr", "abc,1e-3"], "config c00-lrabc: Invalid value for '--lr'"),
        (["--store", str(store), "--nope", "1"], "--nope: not an option"),
        (["--store", str(store), "--frames", "8,0"], "config c01-frames0: --frames 0: must be at least 1"),
    ]
    for args, message in cases:
        result = _sweep(tmp_path / "s", *args)
        assert result.exit_code == 2 and result.output.startswith("error:") and message in result.output, result.output
        assert len(result.output.strip().splitlines()) <= 2  # one line (rich may wrap a long one)
    resumed = _sweep(tmp_path / "nothing", "--resume")
    assert resumed.exit_code == 2 and "holds no sweep" in resumed.output


def test_too_many_configs_for_the_memory_is_refused_naming_how_many_fit(store, tmp_path, monkeypatch):
    models = [torch.nn.Linear(1000, 1000) for _ in range(3)]
    for m in models:
        m.cfg = type("Cfg", (), {"temporal_heads": 2, "num_frames": 8, "temporal_depth": 1})()
        m.head = [m]
    per = state_bytes(models[0])
    act = activation_bytes(models[0], 4, 16)
    assert per == 16 * (1000 * 1000 + 1000)
    assert check_fits(models, 4, 16, torch.device("cpu"), free=10 * per) == 3 * per + act
    with pytest.raises(ConfigError, match="3 configs need about .* 2 fit"):
        check_fits(models, 4, 16, torch.device("cpu"), free=int((2 * per + act) / 0.9) + 1)
    # through the CLI, before any step: nothing trained, one line
    monkeypatch.setattr("vivitcache.sweep.memory.free_bytes", lambda device: 1)
    result = _sweep(tmp_path / "s", "--store", str(store), *TINY, "--temporal-depth", "1", "--epochs", "1",
                    "--lr", "1e-3,2e-3")
    assert result.exit_code == 2 and "2 configs need about" in result.output and ": 0 fit" in result.output
    assert not list((tmp_path / "s").glob("configs/*/checkpoint"))
