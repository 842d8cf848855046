"""Defending the net (npcnn.experiments.defense; ``npcnn attack RUN defense``; the report's section 4b).

On a standard and an FGSM-trained net (one epoch on 5,000 digits each, Wong et al.'s recipe, at eps 0.1):

* the stage's table and curves are what the library's attacks give, the robust net is the more robust one,
  and no sign of gradient masking is reported for it;
* the robust accuracy npcnn reports under PGD-50 with 10 restarts is within 0.5 points of torchattacks'
  (``MultiAttack`` of ten ``PGD``, random starts) on the same weights and images;
* the report's section shows the table, the curves and the pairs of figures; bad settings are one line.
"""
import numpy as np
import pytest
import torch
import torchattacks
from test_attacks import DATA, _PixelNet
from torch_oracle import to_torch

from npcnn import experiments
from npcnn.analysis import attacks as A
from npcnn.cli import main
from npcnn.io import load_npz
from npcnn.report.defense import section_defense
from npcnn.runs import Run

LIMIT, CURVE, EPS = 200, 30, 0.1   # one epoch on 5,000 digits does not make a net robust at eps 0.3


@pytest.fixture(scope="module")
def nets(tmp_path_factory):
    root = tmp_path_factory.mktemp("defense")
    quiet = dict(progress=False, log=lambda *a: None, data_dir=DATA, limit=5000, epochs=1)
    experiments.train(root / "plain", **quiet)
    experiments.train(root / "robust", adversarial="fgsm", eps=EPS, **quiet)
    result = experiments.defense(root / "robust", against=root / "plain", eps=EPS, limit=LIMIT, curve_limit=CURVE,
                                 progress=False)
    return root, result


def test_the_table_and_curves_are_the_library_s_attacks(nets):
    root, r = nets
    d = load_npz(root / "robust" / "defense" / "defense.npz")
    assert [str(n) for n in d["nets"]] == ["standard", "robust"] and float(d["eps"]) == EPS
    assert [str(a) for a in d["attacks"]] == ["clean", "FGSM", "PGD-50, 10 restarts", "APGD-CE + APGD-DLR"]
    assert d["accuracy"].shape == (2, 4) and d["curves"].shape == (2, 3, len(d["curve_eps"]))
    assert int(d["images"]) == LIMIT and int(d["curve_images"]) == CURVE
    clf = Run.open(root / "robust").classifier
    images, labels = Run.open(root / "robust").test_data()
    x, y = images[:LIMIT], labels[:LIMIT].astype(np.int64)
    pgd = A.robustness_curve(clf, x, y, [EPS], attack="pgd", steps=50, step_size=0.01, restarts=10, progress=False)
    assert d["accuracy"][1, 2] == pgd.accuracy[0] == r.table["robust"]["PGD-50, 10 restarts"]
    # the robust net is the more robust one (measured: PGD 84.0 % against 73.5 %; clean 96.5 %, 95.5 %)
    acc = d["accuracy"]
    assert acc[1, 2] > acc[0, 2] + 0.05 and acc[1, 3] > acc[0, 3] + 0.05 and acc[1, 0] > 0.9, acc
    assert acc[1, 1] >= acc[1, 2] - 0.01, acc
    assert np.all(d["curves"][:, :, 0] == d["curves"][:, :, 0][:, :1])   # eps 0: every attack leaves the clean
    assert not [w for w in d["warnings"] if str(w).startswith("robust")], d["warnings"]
    assert np.all(np.asarray(d["train_seconds"]) > 0)
    assert "robust: clean" in r.describe() and "PGD-50, 10 restarts" in r.describe()


def test_the_robust_accuracy_is_torchattacks_within_half_a_point(nets):
    root, r = nets
    run = Run.open(root / "robust")
    clf = run.classifier
    images, labels = run.test_data()
    x = torch.from_numpy(images[:LIMIT].astype(np.float32)[:, None] / np.float32(255))
    y = torch.from_numpy(labels[:LIMIT].astype(np.int64))
    body = torch.nn.Sequential(*list(to_torch(clf.model).eval())[:-1])
    net = _PixelNet(body, clf.normalization).eval()
    torch.manual_seed(0)
    pgds = [torchattacks.PGD(net, eps=EPS, alpha=0.01, steps=50, random_start=True) for _ in range(10)]
    adv = torchattacks.MultiAttack(pgds)(x, y)
    with torch.no_grad():
        theirs = float((net(adv).argmax(dim=1) == y).float().mean())
    ours = r.table["robust"]["PGD-50, 10 restarts"]
    assert abs(ours - theirs) <= 0.005, (ours, theirs)


def test_the_report_shows_both_nets(nets):
    root, _ = nets
    html = section_defense({"plain": str(root / "plain"), "adversarial": str(root / "robust")})
    assert "4b. Defending the net" in html and "PGD-50, 10 restarts" in html and "data:image/png;base64" in html
    assert "FGSM examples of itself" in html and "cyclic schedule" in html
    assert html.count("standard: not run") == 3 and html.count("robust: not run") == 3   # the pairs' stages not run
    assert "not run" in section_defense({"plain": str(root / "plain")})


@pytest.mark.parametrize("argv, message", [
    (["defense"], "defense needs --against RUN_DIR"),
    (["defense", "--against", "{plain}", "--eps", "0.1", "0.2"], "--eps takes one value for `defense`"),
    (["defense", "--against", "{plain}", "--eps", "0"], "--eps must be in (0, 1]"),
    (["defense", "--against", "{plain}", "--limit", "0"], "--limit must be a positive integer"),
    (["defense", "--against", "{plain}", "--steps", "5"], "--steps does not apply to `defense`"),
    (["robustness", "--against", "{plain}"], "--against does not apply to `robustness`"),
])
def test_bad_settings_are_one_line(nets, capsys, argv, message):
    root, _ = nets
    args = [a.format(plain=root / "plain") for a in argv]
    code = main(["attack", str(root / "robust"), *args, "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1 and message in err[0], err


def test_the_standard_net_is_not_a_robust_run(nets, capsys):
    root, _ = nets
    code = main(["attack", str(root / "plain"), "defense", "--against", str(root / "plain"), "--no-progress"])
    assert code == 1 and "not an adversarially trained run" in capsys.readouterr().err
