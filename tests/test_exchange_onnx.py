"""ONNX export, checked by ONNX Runtime: the same probabilities as npcnn on the 10,000 test images.

Every registered architecture (the zoo) is exported after a few training steps on real MNIST
images (so the weights and BatchNorm statistics are realistic, not the initialisation), and ONNX
Runtime (CPU) must agree with npcnn's Classifier to 1e-5 in float32 probability on the whole test
set. The graph's shape (opset, pixel-space input, normalisation inside, two outputs) and the
``npcnn export`` command are checked too.
"""
import numpy as np
import onnx
import pytest

from npcnn import fast
from npcnn.classifier import Classifier, softmax
from npcnn.cli import main
from npcnn.data import Normalization, batches, load_dataset
from npcnn.exchange import OPSET, build_onnx, export_onnx, run_onnx, save_weights
from npcnn.exchange.registry import ARCHITECTURES
from npcnn.nn import NLLLoss
from npcnn.optim import Adam

TOL = 1e-5


@pytest.fixture(scope="module")
def mnist():
    """(train images, train labels, test pixels float32 [10000, 1, 28, 28], normalisation), via $NPCNN_DATA."""
    train_x, train_y = load_dataset("mnist", "train")
    test_x, _ = load_dataset("mnist", "test")
    assert len(test_x) == 10_000
    return train_x, train_y, (test_x.astype(np.float32) / np.float32(255))[:, None], Normalization.from_images(train_x)


def briefly_trained(name, mnist, steps=20):
    train_x, train_y, _, norm = mnist
    model = ARCHITECTURES[name].build(num_classes=10)
    net, loss, opt = fast.plan(model.train()), NLLLoss(), Adam(model.parameters(), lr=1e-3)
    for _, (x, y) in zip(range(steps), batches(train_x[:64 * steps], train_y[:64 * steps], 64, seed=0,
                                               normalization=norm)):
        opt.zero_grad()
        loss.forward(net.forward(x), y)
        net.backward(loss.backward())
        opt.step()
    return model.eval()


@pytest.mark.parametrize("name", sorted(ARCHITECTURES))
def test_onnx_runtime_gives_npcnns_probabilities_on_the_test_set(name, mnist, tmp_path):
    _, _, pixels, norm = mnist
    model = briefly_trained(name, mnist)
    path = export_onnx(str(tmp_path / "net.onnx"), model, norm, class_names=list("0123456789"), name=name)
    got_logits, got = run_onnx(path, pixels)
    want_logits = Classifier(model, norm).logits(pixels)
    want = softmax(want_logits)                          # = Classifier.predict_proba, without a second pass
    assert got.dtype == np.float32 and want.dtype == np.float32 and got.shape == (10_000, 10)
    diff = float(np.max(np.abs(got - want)))
    logit_diff = float(np.max(np.abs(got_logits - want_logits)))
    print(f"{name}: ONNX Runtime vs npcnn on 10,000 test images: max |dp| {diff:.2e}, max |dlogit| {logit_diff:.2e}, "
          f"predictions equal: {np.mean(got.argmax(1) == want.argmax(1)):.4f}")
    assert diff <= TOL
    assert np.mean(got.argmax(1) == want.argmax(1)) > 0.999


def test_the_graph_takes_pixels_and_gives_logits_and_probabilities(mnist):
    _, _, pixels, norm = mnist
    model = ARCHITECTURES["seed-cnn-bn"].build()
    graph = build_onnx(model, norm, name="seed-cnn-bn")
    onnx.checker.check_model(graph, full_check=True)
    assert [(o.domain, o.version) for o in graph.opset_import] == [("", OPSET)] and OPSET == 17
    (inp,) = graph.graph.input
    dims = [d.dim_param or d.dim_value for d in inp.type.tensor_type.shape.dim]
    assert inp.name == "pixels" and dims == ["N", 1, 28, 28]
    assert [o.name for o in graph.graph.output] == ["logits", "probabilities"]
    ops = [n.op_type for n in graph.graph.node]
    assert ops[:2] == ["Sub", "Div"] and ops[-1] == "Softmax" and ops.count("BatchNormalization") == 2
    assert ops.count("Conv") == 2 and ops.count("Gemm") == 2 and "LogSoftmax" not in ops
    names = {i.name for i in graph.graph.initializer}
    assert {"0.weight", "3.running_mean", "11.bias"} <= names and not any("num_batches" in n for n in names)
    props = {p.key: p.value for p in graph.metadata_props}
    assert float(props["mean"]) == norm.mean and float(props["std"]) == norm.std
    for n in (1, 7):                                     # any batch size
        logits, probabilities = run_onnx(graph, pixels[:n])
        assert logits.shape == probabilities.shape == (n, 10)
        np.testing.assert_allclose(probabilities.sum(axis=1), 1, atol=1e-6)


def test_npcnn_export_writes_onnx_and_safetensors(mnist, tmp_path, capsys):
    _, _, pixels, norm = mnist
    model = ARCHITECTURES["seed-cnn"].build()
    weights = tmp_path / "in.safetensors"
    save_weights(weights, model, norm, model_name="seed-cnn")
    run = tmp_path / "run"
    assert main(["import-torch", str(weights), "--out", str(run)]) == 0   # the model name from the metadata
    capsys.readouterr()
    assert main(["export", str(run), "--onnx", str(tmp_path / "m.onnx"), "--safetensors",
                 str(tmp_path / "out.safetensors")]) == 0
    out = capsys.readouterr().out
    assert f"opset {OPSET}" in out and "ONNX Runtime agrees" in out
    assert (tmp_path / "out.safetensors").read_bytes() != b""
    _, probabilities = run_onnx(str(tmp_path / "m.onnx"), pixels[:100])
    assert np.max(np.abs(probabilities - Classifier(model, norm).predict_proba(pixels[:100]))) <= TOL
    assert main(["export", str(run)]) == 1
    assert "nothing to export" in capsys.readouterr().err
    assert main(["export", str(tmp_path / "nowhere"), "--onnx", str(tmp_path / "x.onnx")]) == 1
    assert "no such run folder" in capsys.readouterr().err and not (tmp_path / "x.onnx").exists()
