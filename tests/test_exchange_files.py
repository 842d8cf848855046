"""Safetensors files in and out: PyTorch's keys and layouts, metadata, and every way a file can be wrong.

Each broken file must give one line naming the file and the problem (from Python and from
``npcnn import-torch``), and nothing may be written. The optional packages are never skipped
over: a missing one fails these tests (the test extra installs them).
"""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import safetensors.numpy
import torch
from safetensors.torch import load_file, save_file

from npcnn.cli import main
from npcnn.data import Normalization
from npcnn.exchange import ExchangeFileError, MissingExtraError, load_weights, read_safetensors, save_weights
from npcnn.exchange.registry import ARCHITECTURES
from npcnn.models import seed_cnn

from torch_oracle import to_torch


def bn_net(dtype=np.float32):
    """The BatchNorm net with running statistics and a batch count that are not the defaults."""
    model = seed_cnn(batchnorm=True, dtype=dtype, rng=3)
    rng = np.random.default_rng(4)
    for i in (3, 7):
        model[i].running_mean[:] = rng.normal(size=32)
        model[i].running_var[:] = rng.uniform(0.5, 2.0, size=32)
        model[i].weight.data[:] = rng.uniform(0.5, 1.5, size=32)
        model[i].num_batches_tracked = np.array(17, dtype=np.int64)
    return model.eval()


@pytest.fixture
def good(tmp_path):
    """A valid file written by npcnn, and its state dict."""
    path = tmp_path / "net.safetensors"
    model = bn_net()
    save_weights(path, model, Normalization(0.1307, 0.3081), model_name="seed-cnn-bn", class_names=list("0123456789"),
                 dataset="mnist")
    return path, model.state_dict()


def test_keys_shapes_and_dtypes_are_pytorchs(good):
    path, state = good
    tensors = safetensors.numpy.load_file(str(path))
    assert list(tensors) == sorted(state) or set(tensors) == set(state)
    assert tensors["0.weight"].shape == (32, 1, 3, 3) and tensors["4.weight"].shape == (32, 32, 3, 3)
    assert tensors["9.weight"].shape == (500, 1568) and tensors["11.weight"].shape == (10, 500)
    assert tensors["3.num_batches_tracked"].dtype == np.int64 and tensors["3.num_batches_tracked"].shape == ()
    assert tensors["3.running_var"].dtype == np.float32
    # PyTorch loads it strictly into its own net, with the same values
    twin = to_torch(seed_cnn(batchnorm=True))
    twin.load_state_dict(load_file(str(path)), strict=True)
    for k, v in twin.state_dict().items():
        np.testing.assert_array_equal(v.numpy(), state[k])


def test_round_trip_keeps_weights_and_metadata(good):
    path, state = good
    model, info = load_weights(path)             # the architecture comes from the file's metadata
    assert info["model"] == "seed-cnn-bn" and info["dtype"] == "float32" and info["dataset"] == "mnist"
    assert info["normalization"] == Normalization(0.1307, 0.3081)
    assert info["class_names"] == list("0123456789")
    assert not model.training
    for k, v in model.state_dict().items():
        np.testing.assert_array_equal(v, state[k])
        assert v.dtype == state[k].dtype, k
    assert int(model[3].num_batches_tracked) == 17
    f64, info = load_weights(path, dtype="float64")
    assert f64[0].weight.dtype == np.float64 and info["dtype"] == "float32"


def test_the_registry_names_the_reference_nets():
    assert set(ARCHITECTURES) >= {"seed-cnn", "seed-cnn-bn"}
    assert ARCHITECTURES["seed-cnn-bn"].batchnorm and not ARCHITECTURES["seed-cnn"].batchnorm


def _rewrite(path, tensors, metadata=None):
    safetensors.numpy.save_file(tensors, str(path), metadata=metadata)


def _set(key, value):
    """An edit of the tensor dict: ``tensors[key] = value(tensors)``."""
    def edit(tensors):
        tensors[key] = value(tensors)
    return edit


def _nan_in_bias(tensors):
    tensors["0.bias"][3] = np.nan


# damage done by editing the tensors and saving them again: kind -> (edit, what the error must say)
TENSOR_EDITS = {
    "missing key": (lambda t: t.pop("4.bias"), "missing tensor '4.bias'"),
    "unexpected key": (_set("fc.extra", lambda t: np.zeros(3, np.float32)), "unexpected tensor 'fc.extra'"),
    "wrong shape": (_set("0.weight", lambda t: np.zeros((32, 1, 5, 5), np.float32)),
                    "'0.weight' has shape (32, 1, 5, 5), seed-cnn-bn expects (32, 1, 3, 3)"),
    "float16": (_set("9.weight", lambda t: t["9.weight"].astype(np.float16)), "'9.weight' is float16"),
    "mixed dtypes": (_set("11.bias", lambda t: t["11.bias"].astype(np.float64)), "mixed dtypes"),
    "int32 batch count": (_set("3.num_batches_tracked", lambda t: np.array(5, np.int32)),
                          "'3.num_batches_tracked' is int32, expected int64"),
    "nan": (_nan_in_bias, "'0.bias' holds NaN"),
}


def _damage(kind, src, dst):
    """Write a damaged copy of the valid file ``src`` to ``dst``; return the text the error must contain."""
    data = src.read_bytes()
    tensors = safetensors.numpy.load_file(str(src))
    n = int.from_bytes(data[:8], "little")
    if kind in TENSOR_EDITS:
        edit, message = TENSOR_EDITS[kind]
        edit(tensors)
        _rewrite(dst, tensors)
        return message
    if kind == "bfloat16":
        save_file({k: torch.from_numpy(v).to(torch.bfloat16) if v.dtype == np.float32 else torch.from_numpy(v)
                   for k, v in tensors.items()}, str(dst))
        return "bfloat16"
    if kind == "header longer than the file":
        dst.write_bytes((len(data) + 1000).to_bytes(8, "little") + data[8:])
        return "the header claims"
    if kind == "header shorter than it is":
        dst.write_bytes((n // 2).to_bytes(8, "little") + data[8:])
        return "not valid JSON"
    if kind == "absurd header length":
        dst.write_bytes((2 ** 62).to_bytes(8, "little") + data[8:])
        return "header length"
    if kind == "truncated data":
        dst.write_bytes(data[:-100])
        return "truncated"
    if kind == "truncated to 5 bytes":
        dst.write_bytes(data[:5])
        return "truncated: 5 bytes"
    if kind == "empty":
        dst.write_bytes(b"")
        return "truncated: 0 bytes"
    if kind == "trailing bytes":
        dst.write_bytes(data + b"\0" * 16)
        return "16 bytes after the last tensor"
    if kind == "offsets overlap":
        header = json.loads(data[8:8 + n])
        first = min((v for k, v in header.items() if k != "__metadata__"), key=lambda v: v["data_offsets"][0])
        first["data_offsets"] = [first["data_offsets"][0] + 4, first["data_offsets"][1]]
        text = json.dumps(header).encode()
        dst.write_bytes(len(text).to_bytes(8, "little") + text + data[8 + n:])
        return "data_offsets span"
    if kind == "pickle named .safetensors":
        torch.save({k: torch.from_numpy(v) for k, v in tensors.items()}, str(dst))
        return "never unpickles"
    raise AssertionError(kind)


KINDS = [*TENSOR_EDITS, "bfloat16", "header longer than the file", "header shorter than it is", "absurd header length",
         "truncated data", "truncated to 5 bytes", "empty", "trailing bytes", "offsets overlap",
         "pickle named .safetensors"]


@pytest.mark.parametrize("kind", KINDS)
def test_a_damaged_file_gets_one_line_naming_it_and_nothing_is_written(kind, good, tmp_path, capsys):
    bad = tmp_path / "bad.safetensors"
    expected = _damage(kind, good[0], bad)
    with pytest.raises(ExchangeFileError) as e:
        load_weights(bad, "seed-cnn-bn")
    message = str(e.value)
    assert message.startswith(f"{bad}: ") and expected in message and "\n" not in message, message
    out = tmp_path / "run"
    capsys.readouterr()
    assert main(["import-torch", str(bad), "--model", "seed-cnn-bn", "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"npcnn: error: {bad}: ") and expected in err, err
    assert not out.exists()
    assert sorted(os.listdir(tmp_path)) == ["bad.safetensors", "net.safetensors"]   # no temporary left either


def test_a_pt_file_is_refused_with_how_to_save_safetensors(tmp_path, capsys):
    pt = tmp_path / "net.pt"
    torch.save(to_torch(seed_cnn()).state_dict(), str(pt))
    assert main(["import-torch", str(pt), "--model", "seed-cnn", "--out", str(tmp_path / "run")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(pt) in err and "save_file(model.state_dict()" in err, err
    with pytest.raises(ExchangeFileError, match="never unpickles"):
        read_safetensors(tmp_path / "weights.pth")        # refused by its name, before it is even opened
    assert not (tmp_path / "run").exists()


def test_wrong_model_name_suggests_the_one_that_fits(good):
    with pytest.raises(ExchangeFileError, match="try --model seed-cnn-bn"):
        load_weights(good[0], "seed-cnn")


def test_a_file_without_metadata_needs_a_model_name(good, tmp_path):
    plain = tmp_path / "plain.safetensors"
    _rewrite(plain, safetensors.numpy.load_file(str(good[0])))
    with pytest.raises(ExchangeFileError, match="which network"):
        load_weights(plain)
    model, info = load_weights(plain, "seed-cnn-bn")
    assert info["normalization"] is None and info["class_names"] is None


def test_bad_metadata_is_named(good, tmp_path):
    tensors = safetensors.numpy.load_file(str(good[0]))
    for metadata, text in [({"mean": "0.1"}, "only one of mean and std"), ({"mean": "0.1", "std": "-1"}, "std"),
                           ({"class_names": "[1, 2]"}, "class_names")]:
        path = tmp_path / "meta.safetensors"
        _rewrite(path, tensors, metadata)
        with pytest.raises(ExchangeFileError, match=text):
            load_weights(path, "seed-cnn-bn")


def test_missing_package_names_the_extra(monkeypatch, good):
    monkeypatch.setitem(sys.modules, "safetensors.numpy", None)     # `import safetensors.numpy` now fails
    with pytest.raises(MissingExtraError, match=r'pip install "npcnn\[exchange\]"'):
        load_weights(good[0])


def test_the_library_imports_neither_torch_nor_the_extras():
    code = ("import sys, npcnn, npcnn.exchange, npcnn.cli; npcnn.cli.build_parser(); "
            "print(sorted(m for m in ('torch', 'safetensors', 'onnx', 'onnxruntime') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
    root = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "npcnn")
    for folder, _, files in os.walk(root):
        for name in files:
            if name.endswith(".py"):
                text = open(os.path.join(folder, name), encoding="utf-8").read()
                assert "import torch" not in text and "from torch" not in text and "import pickle" not in text, name
