"""The model zoo against PyTorch: parameter counts, state-dict keys, the forward pass and one training
step's gradients (float64), each net built by npcnn and by torch_oracle.to_torch from the same weights.
Then the names: MODELS, build_model's errors, save_model / load_model by name (old files included),
and the safetensors round trip of every registered zoo net."""
import numpy as np
import pytest
import torch

import npcnn.nn as nn
from npcnn import fast
from npcnn.data import Normalization
from npcnn.models import (INPUT_SHAPES, MODELS, PARAMETERS, build_model, check_input_shape, count_parameters,
                          load_model, save_model, summary)
from torch_oracle import rel_err, to_numpy, to_torch

torch.set_num_threads(1)
NAMES = list(MODELS)


@pytest.mark.parametrize("name", NAMES)
def test_parameter_count_equals_the_torch_twins(name):
    model = MODELS[name]()
    twin = to_torch(model, np.float32)
    assert count_parameters(model) == sum(p.numel() for p in twin.parameters()) == PARAMETERS[name]
    assert set(model.state_dict()) == set(twin.state_dict())
    assert isinstance(model[-1], nn.LogSoftmax) and isinstance(model[-2], nn.Linear)
    assert model[-2].out_features == 10 and MODELS[name](num_classes=7)[-2].out_features == 7
    assert f"total parameters: {PARAMETERS[name]:,}" in summary(model, (1, *INPUT_SHAPES[name]))


def _torch_step(twin, x, y):
    """Logits, loss, dL/dx and every parameter gradient of one NLL step in torch (train mode)."""
    xt = torch.tensor(x, requires_grad=True)
    out = twin(xt)
    loss = torch.nn.functional.nll_loss(out, torch.from_numpy(y))
    loss.backward()
    return to_numpy(out), float(loss.detach()), to_numpy(xt.grad), {k: to_numpy(p.grad) for k, p in twin.named_parameters()}


@pytest.mark.parametrize("path", ["readable", "fast"])
@pytest.mark.parametrize("name", NAMES)
def test_forward_and_one_training_step_equal_torch_in_float64(name, path):
    """Train mode (BatchNorm on batch statistics, running stats updated), the npcnn side through the readable
    layers or through fast.plan (what training runs); then one eval-mode forward."""
    rng = np.random.default_rng(3)
    model = MODELS[name](dtype=np.float64, rng=1)
    twin = to_torch(model, np.float64).train()
    x = rng.standard_normal((6, *INPUT_SHAPES[name]))
    y = rng.integers(0, 10, size=6)
    out_t, loss_t, dx_t, grads_t = _torch_step(twin, x, y)
    net = fast.plan(model, fuse=True) if path == "fast" else model
    loss = nn.NLLLoss()
    out = net.forward(x.copy())
    value = loss.forward(out, y)
    dx = net.backward(loss.backward())
    assert rel_err(out, out_t) < 1e-10 and abs(value - loss_t) < 1e-10 * max(1.0, abs(loss_t))
    assert rel_err(dx, dx_t) < 1e-9, name
    grads = {k: p.grad for k, p in model.named_parameters()}
    assert set(grads) == set(grads_t)
    bad = {k: rel_err(grads[k], grads_t[k]) for k in grads if not rel_err(grads[k], grads_t[k]) < 1e-9}
    assert not bad, f"{name}: parameter gradients differ: {bad}"
    for key, value in twin.state_dict().items():      # running statistics after the step
        assert rel_err(model.state_dict()[key], to_numpy(value)) < 1e-12, key
    model.eval(), twin.eval()
    x2 = rng.standard_normal((3, *INPUT_SHAPES[name]))
    assert rel_err(net.forward(x2), to_numpy(twin(torch.from_numpy(x2)))) < 1e-10


def test_small_resnet_blocks_and_their_keys():
    model = MODELS["small-resnet"]()
    blocks = [m for m in model if isinstance(m, nn.Residual)]
    assert len(blocks) == 3 and blocks[0].shortcut is None and blocks[1].shortcut is not None
    assert {"3.body.0.weight", "3.body.1.running_var", "5.shortcut.0.weight", "7.shortcut.1.bias"} <= set(
        model.state_dict())
    assert isinstance(model[-4], nn.AdaptiveAvgPool2d)


def test_bad_names_and_shapes_are_one_line_errors():
    with pytest.raises(ValueError, match=r"^unknown model 'resnet50'; known models: seed-cnn, lenet5, madry-mnist"):
        build_model("resnet50")
    with pytest.raises(ValueError, match="batchnorm applies only to the reference net"):
        build_model("lenet5", batchnorm=True)
    with pytest.raises(ValueError, match="^model small-vgg-cifar expects inputs of shape 3x32x32, but the mnist "
                                         "data gives 1x28x28$"):
        check_input_shape("small-vgg-cifar", (1, 28, 28), "the mnist data")
    check_input_shape("small_vgg", (1, 28, 28))          # an underscore is accepted
    assert count_parameters(build_model("seed_cnn", batchnorm=True)) == 799_206


@pytest.mark.parametrize("name", ["seed-cnn", "lenet5", "small-resnet", "small-vgg-cifar"])
def test_save_and_load_by_name(name, tmp_path):
    model = build_model(name, rng=4)
    for m in model.modules():                           # non-default BN statistics must travel too
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean[...] = np.arange(m.num_features) * 0.1
    path = str(tmp_path / "model.npz")
    save_model(path, model, Normalization(0.13, 0.31), architecture=name)
    loaded, norm, info = load_model(path)
    assert info["model"] == name and norm.std == 0.31
    for k, v in model.state_dict().items():
        np.testing.assert_array_equal(loaded.state_dict()[k], v)
    with pytest.raises(ValueError, match="batchnorm=True describes the reference net only"):
        save_model(path, model, Normalization(0.13, 0.31), batchnorm=True, architecture="lenet5")


def test_an_old_model_file_still_loads(tmp_path):
    """Files written before the zoo: architecture "seed_cnn" with the batchnorm flag (what save_model still
    writes for the reference net)."""
    from npcnn.io import load_npz, save_npz

    model = build_model("seed-cnn", batchnorm=True, rng=2)
    path = str(tmp_path / "old.npz")
    save_model(path, model, Normalization(0.1307, 0.3081), batchnorm=True)
    arrays = load_npz(path)
    assert str(arrays["meta.architecture"]) == "seed_cnn" and bool(arrays["meta.batchnorm"])
    save_npz(path, arrays)
    loaded, _, info = load_model(path)
    assert info["batchnorm"] and info["model"] == "seed-cnn" and info["architecture"] == "seed_cnn"
    assert count_parameters(loaded) == 799_206


@pytest.mark.parametrize("name", ["lenet5", "madry-mnist", "wong-mnist", "small-vgg", "small-resnet"])
def test_zoo_is_registered_for_exchange(name, tmp_path):
    from npcnn.exchange.registry import ARCHITECTURES, name_of
    from npcnn.exchange.weights import load_weights, save_weights

    arch = ARCHITECTURES[name]
    assert arch.npz_architecture == name and name_of(False, name) == name and f"{PARAMETERS[name]:,}" in arch.description
    model = arch.build()
    path = save_weights(str(tmp_path / "w.safetensors"), model, Normalization(0.1, 0.3), model_name=name)
    loaded, info = load_weights(path)
    assert info["model"] == name
    for k, v in model.state_dict().items():
        np.testing.assert_array_equal(loaded.state_dict()[k], v)
