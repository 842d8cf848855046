"""``npcnn reproduce``: the whole report, stage by stage, resumable.

Each stage is one ``npcnn`` command with its arguments. ``DIR/pipeline.json``
records the arguments of every finished stage; a rerun skips a stage whose
record matches and whose output exists, so after an interruption (or a
change of one setting) only what is missing or changed runs again.
"""
import os
import shutil
import time
from dataclasses import dataclass

from .io import read_json, write_json

# The report's settings, and the reduced ones of --quick (same stages, smaller numbers).
FULL = dict(limit=None, epochs=10, class_steps=15000, targeted_steps=1000, noise_steps=1500,
            eps=["0", "0.05", "0.1", "0.15", "0.2", "0.25", "0.3"], robustness_attack="fgsm")
QUICK = dict(limit=6000, epochs=2, class_steps=400, targeted_steps=200, noise_steps=300,
             eps=["0", "0.1", "0.2", "0.3"], robustness_attack="fgsm")


@dataclass
class Stage:
    name: str
    argv: list  # the npcnn command that runs it
    output: str  # a path that exists once the stage has finished

    def key(self):
        return {"argv": [str(a) for a in self.argv]}


def stages(out, dataset, quick, data_dir=None, seed=0):
    s = QUICK if quick else FULL
    plain, bn = os.path.join(out, "plain"), os.path.join(out, "batchnorm")
    train = ["train", "--compare", "--resume", "--out", out, "--dataset", dataset, "--epochs", s["epochs"], "--seed", seed,
             "--no-progress"]
    if s["limit"]:
        train += ["--limit", s["limit"]]
    if data_dir:
        train += ["--data-dir", data_dir]
    attacks = os.path.join(plain, "attacks")
    return [
        Stage("train", train, os.path.join(out, "comparison.json")),
        Stage("inspect", ["inspect", plain], os.path.join(plain, "inspect")),
        Stage("occlusion", ["occlusion", plain], os.path.join(plain, "occlusion", "occlusion.npz")),
        Stage("saliency", ["saliency", plain], os.path.join(plain, "saliency")),
        Stage("class-image", ["attack", plain, "class-image", "--steps", s["class_steps"]],
              os.path.join(attacks, "class_image.npz")),
        Stage("targeted", ["attack", plain, "targeted", "--pairs", "all", "--steps", s["targeted_steps"]],
              os.path.join(attacks, "targeted.npz")),
        Stage("noise", ["attack", plain, "noise", "--steps", s["noise_steps"]], os.path.join(attacks, "noise.npz")),
        Stage("robustness", ["attack", plain, "robustness", "--attack", s["robustness_attack"], "--eps", *s["eps"],
                             "--variants", bn], os.path.join(attacks, "robustness.npz")),
    ]


class StageFailed(RuntimeError):
    pass


def reproduce(out, *, dataset="mnist", quick=False, data_dir=None, seed=0, log=print):
    """Run every stage not already done with the same settings, then write ``out/report.html``."""
    from .cli import build_parser, run_guarded
    from .report import write_report

    os.makedirs(out, exist_ok=True)
    record_path = os.path.join(out, "pipeline.json")
    record = read_json(record_path) if os.path.isfile(record_path) else {}
    if record.get("dataset", dataset) != dataset:
        raise ValueError(f"{out} holds a {record['dataset']} reproduction; use another --out for {dataset}")
    record["dataset"] = dataset
    done = record.setdefault("stages", {})
    parser = build_parser()
    total = time.perf_counter()
    for stage in stages(out, dataset, quick, data_dir, seed):
        previous = done.get(stage.name) or {}
        if previous.get("done") and previous.get("argv") == stage.key()["argv"] and os.path.exists(stage.output):
            log(f"[{stage.name}] reused: its outputs exist and its settings match")
            continue
        if stage.name == "train" and previous and previous.get("argv") != stage.key()["argv"]:
            _clear_stale_training(out)  # other training settings: the old runs (and all built on them) go
        start = time.perf_counter()
        argv = [str(a) for a in stage.argv]
        log(f"[{stage.name}] npcnn {' '.join(argv)}")
        args = parser.parse_args(argv)
        code = run_guarded(args.func, args)
        if code != 0:
            raise StageFailed(f"stage {stage.name} failed (exit code {code}); fix the cause and rerun the same "
                              f"command: finished stages are reused")
        done[stage.name] = {**stage.key(), "done": True, "seconds": round(time.perf_counter() - start, 1)}
        write_json(record_path, record)
        log(f"[{stage.name}] done in {time.perf_counter() - start:.1f} s")
    path = write_report(out)
    log(f"[report] {path} ({time.perf_counter() - total:.0f} s in all)")
    return path


def _clear_stale_training(out):
    """Training settings changed: the old runs (and everything computed from them) must go."""
    for name in ("plain", "batchnorm"):
        folder = os.path.join(out, name)
        if os.path.isdir(folder):
            shutil.rmtree(folder)
    for name in ("comparison.json", "comparison.png"):
        if os.path.exists(os.path.join(out, name)):
            os.unlink(os.path.join(out, name))

