"""The benchmark scripts run end to end in their quick modes (they assert nothing about speed)."""
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_bench_train_quick_runs_every_task_and_its_json_feeds_the_report(tmp_path):
    from npcnn.experiments import TrainConfig, train_run
    from npcnn.report import build_report

    run = tmp_path / "run"
    train_run(TrainConfig(limit=500, epochs=1), run, progress=False, log=None)
    out = run / "benchmark.json"                     # where `npcnn report` looks for it
    # JAX is an optional [bench] extra: leave it out so the test does not depend on it.
    result = subprocess.run([sys.executable, "benchmarks/bench_train.py", "--quick", "--peers", "npcnn,torch,numpy",
                             "--json", str(out)], cwd=REPO, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "torch: ok" in result.stdout and "numpy: ok" in result.stdout   # same numbers from the same weights
    res = json.loads(out.read_text())
    summary = res["summary"]["default"]
    for task in ("train", "train_bn", "infer", "attack"):
        assert summary[task]["npcnn"], task
    assert summary["train"]["npcnn"]["images_per_s"] > 0
    assert summary["train"]["torch"]["images_per_s_npcnn_ratio"] > 0
    assert {f"steps_per_s_{s}" for s in (1, 10, 90)} <= set(summary["attack"]["npcnn"])
    extras = res["extras"]
    assert extras["input_grad_speedup_10"] > 0 and extras["gemm_floor_ms"] > 0
    assert res["compile"]["warm_cache_s"] is not None
    # the report's speed table is read from that file, number for number
    page = build_report(run)
    assert "not run:</strong> the speed benchmark" not in page
    assert f"{summary['train']['npcnn']['images_per_s']:,.0f}" in page
    assert f"(x{summary['train']['torch']['images_per_s_npcnn_ratio']:.2f})" in page


def test_profile_layers_prints_the_per_layer_table():
    result = subprocess.run([sys.executable, "benchmarks/profile_layers.py", "--repeats", "2"], cwd=REPO,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "| layer | forward ms | backward ms | share |" in result.stdout
    assert "fused Conv2d+ReLU+MaxPool2d" in result.stdout and "training step (fused)" in result.stdout


def test_bench_gemm_floor_times_the_gemms_the_fast_path_runs(tmp_path):
    """bench_gemm_floor on LeNet-5 and the small ResNet: the convs it times are those the fast path runs as
    chunked GEMMs, at their GEMM shapes (the direct first convs left out), and every time is measured."""
    out = tmp_path / "floor.json"
    result = subprocess.run([sys.executable, "benchmarks/bench_gemm_floor.py", "--models", "lenet5,small-resnet",
                             "--batch", "40", "--repeats", "1", "--json", str(out)], cwd=REPO, capture_output=True,
                            text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "whole forward: GEMM floor" in result.stdout
    models = json.loads(out.read_text())["models"]
    paths = {m: [(r["layer"], r["path"], r.get("gemm", [])[1:]) for r in models[m]["convs"]] for m in models}
    assert paths["lenet5"] == [("0", "direct", []), ("3", "gemm", [150, 16])]
    assert [p for p in paths["small-resnet"] if p[1] == "direct"] == [("0", "direct", [])]
    assert ("3.body.0", "winograd", [144, 16]) in paths["small-resnet"]    # 16 -> 16 3x3: by Winograd
    assert ("5.body.0", "gemm", [144, 32]) in paths["small-resnet"]        # 16 -> 32 3x3 stride 2: im2col
    assert ("5.shortcut.0", "gemm", [16, 32]) in paths["small-resnet"]
    assert ("5.body.3", "winograd", [288, 32]) in paths["small-resnet"]     # 32 -> 32 3x3: by Winograd
    assert len(paths["small-resnet"]) == 9
    for res in models.values():
        assert res["floor_ms"] > 0 and res["npcnn_ms"] > 0 and res["torch_ms"] > 0
        assert all(r["floor_ms"] > 0 and r["chunks"] >= 1 for r in res["convs"] if r["path"] in ("gemm", "winograd"))


def test_bench_zoo_quick_checks_and_measures_a_zoo_net_against_pytorch(tmp_path):
    """bench_zoo on two zoo nets (one with residual blocks) against PyTorch in both layouts: the peers
    compute the same thing from the same weights, and every cell of both tables is measured."""
    out = tmp_path / "zoo.json"
    result = subprocess.run([sys.executable, "benchmarks/bench_zoo.py", "--quick", "--models", "lenet5,small-resnet",
                             "--peers", "npcnn,torch,torch_cl", "--json", str(out)], cwd=REPO, capture_output=True,
                            text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    for model in ("lenet5", "small-resnet"):
        assert f"{model}: torch: ok, torch_cl: ok" in result.stdout
    summary = json.loads(out.read_text())["summary"]["default"]
    for task in ("train", "infer"):
        for model in ("lenet5", "small-resnet"):
            row = summary[task][model]
            assert row["peers"]["npcnn"]["images_per_s"] > 0
            assert row["npcnn_over"]["pytorch"] > 0 and row["npcnn_over"]["torch_cl"] > 0


def test_bench_zoo_round_takes_windows_of_warm_workers_in_turn(monkeypatch):
    """measure_round: a worker per peer, all warm before the first window, then the peers' windows in turn
    (the order rotated from turn to turn), each peer's median kept with its windows; a worker that cannot
    start answers every window with its error (the round goes on, no hang)."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    import bench_zoo

    events = []
    for name in ("ready", "window"):
        method = getattr(bench_zoo.Worker, name)
        monkeypatch.setattr(bench_zoo.Worker, name,
                            lambda self, *a, m=method, n=name: events.append((n, self.proc.args[4])) or m(self, *a))
    runs = bench_zoo.measure_round("wong-mnist", ["npcnn", "no-such-peer"], "train", "default", quick=False,
                                   windows=3, seconds=0.05, pause=0)
    peers = [peer for _, peer in events]
    assert [n for n, _ in events] == ["ready"] * 2 + ["window"] * 6
    assert peers[2:] == ["npcnn", "no-such-peer", "no-such-peer", "npcnn", "npcnn", "no-such-peer"]
    npcnn = runs["npcnn"]
    assert len(npcnn["windows"]) == 3 and npcnn["images_per_s"] == sorted(npcnn["windows"])[1] > 0
    assert npcnn["peak_rss_mb"] > 0
    assert runs["no-such-peer"] == {"error": "KeyError: 'no-such-peer'"}


def test_bench_zoo_worker_skips_lines_a_library_prints_and_reports_a_dead_worker():
    """Worker._answer: the next JSON line, past any line a library printed; at the end of the output, the last
    line of the worker's stderr as its error, from then on."""
    import io
    import tempfile
    from types import SimpleNamespace
    sys.path.insert(0, str(REPO / "benchmarks"))
    import bench_zoo

    worker = bench_zoo.Worker.__new__(bench_zoo.Worker)
    worker.error, worker.err = None, tempfile.TemporaryFile(mode="w+")
    worker.err.write("Traceback (most recent call last):\nRuntimeError: out of memory\n")
    worker.proc = SimpleNamespace(stdout=io.StringIO('[W] a warning on stdout\n{"ready": true}\n'),
                                  wait=lambda: 1, returncode=1)
    assert worker.ready() == {"ready": True}
    assert worker._answer() == {"error": "RuntimeError: out of memory"}
    assert worker._answer() == {"error": "RuntimeError: out of memory"}


def test_bench_conv_train_times_each_conv_the_training_step_runs_against_pytorch(tmp_path):
    """bench_conv_train on the small ResNet and Madry et al.'s net: every conv of the ResNet, on the path the
    fast step takes (the stem direct, the stride-1 3x3s by Winograd: forward (no max-pool in the net), dL/dx
    and dL/dW; the first conv without dL/dx), timed in both libraries; Madry et al.'s convs are all ConvReLUPool's, so none is timed."""
    out = tmp_path / "convs.json"
    result = subprocess.run([sys.executable, "benchmarks/bench_conv_train.py", "--models", "small-resnet,madry-mnist",
                             "--batch", "4", "--repeats", "1", "--json", str(out)], cwd=REPO, capture_output=True,
                            text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "all convs: npcnn" in result.stdout and "madry-mnist: every conv is fused" in result.stdout
    models = json.loads(out.read_text())["models"]
    assert models["madry-mnist"] == []
    rows = {r["layer"]: r for r in models["small-resnet"]}
    assert len(rows) == 9
    assert (rows["0"]["path"], rows["0"]["input_grad"]) == ("direct", False)
    assert rows["3.body.0"]["path"] == "gemm; winograd: fwd, dW, dx" and rows["3.body.0"]["input"] == "16x28x28"
    assert rows["5.body.3"]["path"] == "gemm; winograd: fwd, dW, dx"
    assert rows["5.body.0"]["path"] == "gemm" and rows["5.body.0"]["conv"] == "16->32 3x3 s2"
    assert all(r["input_grad"] for name, r in rows.items() if name != "0")
    for r in rows.values():
        assert r["npcnn"]["forward"] > 0 and r["npcnn"]["backward"] > 0 and r["torch"]["forward"] > 0
        assert r["torch"]["layout"] in ("NCHW", "channels_last")
