"""Looking deeper (npcnn.analysis.embedding / .channels, npcnn.experiments.deeper) against PyTorch and Captum.

* ``channel_ablation`` equals Captum's ``LayerFeatureAblation`` (the conv's output, ``layer_baselines=0``, a
  ``layer_mask`` with one group per channel, target = the labels) per image and channel, in float64 on fixed
  random weights (conv1 and conv2, with and without BatchNorm); its accuracies equal those of the net with
  that filter's weights and bias zeroed.
* ``penultimate`` equals the torch twin's output before its last Linear (fc1 after its ReLU).
* ``top_activations``: the receptive field is the set of pixels a unit depends on (the gradient of a net
  with every path made visible, ``ties._reach_net``); each patch is the image's crop; changing the pixels
  outside it leaves the activation as it is, changing those inside moves it (a property test); the top k
  are the brute-force top k, ties to the earlier image and position, whatever the batch size.
* ``embed``: shapes, the same map for the same seed; ``knn_accuracy`` on separated and on mixed points.
* On a trained run (made once per session, ``test_attacks.trained_run_dir``): each stage writes its figure
  and then its ``.npz``; the classes stay apart in the map; a bad setting raises before anything is written.

The float64 comparisons use inputs checked to be away from the net's kinks (``ties.kink_margin``), as in
test_saliency.py; forward values are continuous across a kink, so this is a margin for the predictions.
"""
import os
import shutil

import numpy as np
import pytest
import torch
from captum.attr import LayerFeatureAblation
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_attacks import trained_run_dir
from test_features import MEAN, STD, PixelTorch, digits, make_classifier
from ties import _reach_net, kink_margin
from torch_oracle import rel_err

from npcnn.analysis.channels import channel_ablation, receptive_field, top_activations
from npcnn.analysis.embedding import embed, knn_accuracy, penultimate
from npcnn.analysis.features import conv_layers, feature_maps
from npcnn.experiments import deeper
from npcnn.io import load_npz
from npcnn.runs import Run

TIE_FREE = 1e-9


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """One torch thread, as in test_attacks.py: two on a busy 2-core machine ran Captum's loops far slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def torch_conv(net, layer):
    return [m for m in net.body if isinstance(m, torch.nn.Conv2d)][int(layer[-1]) - 1]


def labelled_digits(clf, n=30, seed=1):
    """Tie-free digits and labels: the net's prediction for two images in three, another class for the rest."""
    x = digits(n, seed=seed)
    assert kink_margin(clf, x) > TIE_FREE
    y = clf.predict(x)
    y[::3] = (y[::3] + 3) % 10
    return x, y


# --------------------------------------------------------------------------- ablation

@pytest.mark.parametrize("batchnorm", [False, True])
@pytest.mark.parametrize("layer", ["conv1", "conv2"])
def test_ablation_equals_captum_layer_feature_ablation(batchnorm, layer):
    clf = make_classifier(batchnorm)
    x, y = labelled_digits(clf, 6)
    ours = channel_ablation(clf, x, y, layer=layer, batch_size=4)          # two batches
    net = PixelTorch(clf)
    conv = torch_conv(net, layer)
    size = 28 if layer == "conv1" else 14
    mask = torch.arange(conv.out_channels).reshape(1, -1, 1, 1).expand(1, -1, size, size).contiguous()
    ref = LayerFeatureAblation(net, conv).attribute(torch.from_numpy(x[:, None]), target=torch.from_numpy(y),
                                                    layer_baselines=0.0, layer_mask=mask).detach().numpy()
    assert ref.shape == (6, 32, size, size)
    assert np.all(ref == ref[:, :, :1, :1])                                 # one value per channel
    assert ours.logit_change.shape == (6, 32)
    assert rel_err(ours.logit_change, ref[:, :, 0, 0]) < 1e-10
    assert np.abs(ours.logit_change).max() > 1e-3                           # the channels matter


@pytest.mark.parametrize("layer", ["conv1", "conv2"])
def test_ablation_accuracy_equals_the_net_without_that_filter(layer):
    clf = make_classifier()
    x, y = labelled_digits(clf, 30)
    r = channel_ablation(clf, x, y, layer=layer, batch_size=16)
    assert r.base_accuracy == pytest.approx(np.mean(clf.predict(x) == y))
    conv = conv_layers(clf)[layer]
    w, b = conv.weight.data.copy(), conv.bias.data.copy()
    try:
        for k, c in enumerate(r.channels):
            conv.weight.data[c], conv.bias.data[c] = 0, 0
            logits = clf.logits(x)
            top2 = np.sort(logits, axis=1)[:, -2:]
            assert (top2[:, 1] - top2[:, 0]).min() > 1e-9                   # no tie for the prediction
            correct = logits.argmax(axis=1) == y
            assert r.accuracy[k] == pytest.approx(correct.mean())
            for cls in range(10):
                on = y == cls
                want = correct[on].mean() if on.any() else np.nan
                np.testing.assert_allclose(r.class_accuracy[k, cls], want)
            conv.weight.data[c], conv.bias.data[c] = w[c], b[c]
    finally:
        conv.weight.data[...], conv.bias.data[...] = w, b
    np.testing.assert_allclose(r.drop, r.base_accuracy - r.accuracy)
    assert r.class_drop.shape == (32, 10)
    assert (r.drop != 0).any()
    sub = channel_ablation(clf, x, y, layer=layer, channels=[7, 2])
    np.testing.assert_allclose(sub.logit_change, r.logit_change[:, [7, 2]], rtol=1e-12, atol=1e-12)


def test_ablation_rejects_bad_settings():
    clf = make_classifier()
    x, y = digits(2), np.array([1, 2])
    with pytest.raises(ValueError, match="--layer must be one of conv1, conv2"):
        channel_ablation(clf, x, y, layer="fc1")
    with pytest.raises(ValueError, match=r"--channels must be distinct integers in 0\.\.31"):
        channel_ablation(clf, x, y, channels=[3, 32])


# --------------------------------------------------------------------------- penultimate

@pytest.mark.parametrize("batchnorm", [False, True])
def test_penultimate_equals_torch_fc1_after_relu(batchnorm):
    clf = make_classifier(batchnorm)
    x = digits(5)
    ours = penultimate(clf, x, batch_size=2)
    body = PixelTorch(clf).body
    assert isinstance(body[-1], torch.nn.Linear) and isinstance(body[-2], torch.nn.ReLU)
    with torch.no_grad():
        ref = body[:-1]((torch.from_numpy(x[:, None]) - MEAN) / STD).numpy()
    assert ours.shape == (5, 500) and ours.dtype == np.float64
    assert rel_err(ours, ref) < 1e-10
    assert ours.min() == 0 and ours.max() > 0                              # after the ReLU
    u8 = np.round(x * 255).astype(np.uint8)
    np.testing.assert_allclose(penultimate(clf, u8), penultimate(clf, u8 / 255.0), rtol=1e-12, atol=1e-12)


# --------------------------------------------------------------------------- receptive field, top activations

@pytest.mark.parametrize("batchnorm", [False, True])
def test_receptive_field_is_what_a_unit_depends_on(batchnorm):
    clf = make_classifier(batchnorm)
    assert receptive_field(clf, "conv1") == {"size": (3, 3), "stride": (1, 1), "offset": (-1, -1)}
    assert receptive_field(clf, "conv2") == {"size": (8, 8), "stride": (2, 2), "offset": (-3, -3)}
    body = PixelTorch(clf).body.double()
    for layer, size in (("conv1", 28), ("conv2", 14)):
        index = [i for i, m in enumerate(body) if isinstance(m, torch.nn.Conv2d)][int(layer[-1]) - 1]
        reach = _reach_net(body, index)
        rf = receptive_field(clf, layer)
        for r, c in [(0, 0), (size - 1, size - 1), (0, size - 1), (size // 2, size // 3), (1, 2)]:
            probe = torch.ones(1, 1, 28, 28, dtype=torch.float64, requires_grad=True)
            reach(probe)[0, 0, r, c].backward()
            seen = (probe.grad[0, 0] > 0).numpy()
            top, left = rf["offset"][0] + r * rf["stride"][0], rf["offset"][1] + c * rf["stride"][1]
            box = np.zeros((28, 28), bool)
            box[max(top, 0):top + rf["size"][0], max(left, 0):left + rf["size"][1]] = True
            np.testing.assert_array_equal(seen, box, err_msg=f"{layer} unit ({r}, {c})")


@pytest.fixture(scope="module")
def tops():
    clf = make_classifier()
    x = digits(12, seed=4)
    return clf, x, {layer: top_activations(clf, x, layer=layer, k=5, batch_size=5) for layer in ("conv1", "conv2")}


def test_top_activations_are_the_brute_force_top_k(tops):
    clf, x, found = tops
    for layer, t in found.items():
        maps = feature_maps(clf, x, post_activation=True, layers=[layer])[layer]
        _, c, h, w = maps.shape
        assert t.values.shape == t.indices.shape == (c, 5) and t.positions.shape == (c, 5, 2)
        size = receptive_field(clf, layer)["size"]
        assert t.patches.shape == (c, 5) + size
        for ch in range(c):
            flat = maps[:, ch].ravel()                        # image-major, then row-major positions
            order = np.lexsort((np.arange(flat.size), -flat))[:5]
            np.testing.assert_array_equal(t.indices[ch], order // (h * w))
            np.testing.assert_array_equal(t.positions[ch], np.stack(np.divmod(order % (h * w), w), -1))
            np.testing.assert_array_equal(t.values[ch], flat[order])


def test_top_activations_bound_keeps_every_winner_among_many_ties():
    """The per-batch bound (k-th largest image peak, then the k-th best so far) drops only values that
    cannot win: checked on maps of a few integer levels (ties everywhere), a dead channel among them,
    against sorting everything, for k below, at and above the batch size."""
    from npcnn.analysis.channels import _candidates, _top_k

    rng = np.random.default_rng(3)
    maps = rng.integers(0, 4, size=(12, 5, 3, 4)).astype(np.float32)
    maps[:, 2] = 0.0                                                     # a dead channel: all tied
    b, c, h, w = maps.shape
    everything = maps.transpose(1, 0, 2, 3).reshape(c, -1)
    for k in (1, 4, 9, 30, 100):
        ref = _top_k(everything, np.broadcast_to(np.arange(b * h * w), everything.shape), k)
        for batch in (2, 5, 12):
            best_v = best_i = None
            for i in range(0, b, batch):
                chunk = maps[i:i + batch]
                floor = None if best_v is None or best_v.shape[1] < k else best_v[:, -1]
                vals, ids = _candidates(chunk, i * h * w, k, floor)
                if best_v is not None:
                    vals, ids = np.concatenate([best_v, vals], 1), np.concatenate([best_i, ids], 1)
                best_v, best_i = _top_k(vals, ids, min(k, vals.shape[1]))
            np.testing.assert_array_equal(best_v, ref[0])
            np.testing.assert_array_equal(best_i, ref[1])


def test_top_activations_break_ties_by_image_then_position():
    clf = make_classifier()
    x = np.concatenate([np.zeros((3, 28, 28)), digits(2, seed=5), np.zeros((2, 28, 28))])   # black: ties
    for layer in ("conv1", "conv2"):
        maps = feature_maps(clf, x, post_activation=True, layers=[layer])[layer]
        ref = None
        for batch in (1, 3, len(x)):
            t = top_activations(clf, x, layer=layer, k=40, batch_size=batch)
            got = (t.indices, t.positions, t.values)
            if ref is None:
                ref = got
                _, c, h, w = maps.shape
                for ch in range(c):
                    flat = maps[:, ch].ravel()
                    order = np.lexsort((np.arange(flat.size), -flat))[:40]
                    np.testing.assert_array_equal(t.indices[ch] * h * w + t.positions[ch, :, 0] * w +
                                                  t.positions[ch, :, 1], order)
            for a, b in zip(got, ref):
                np.testing.assert_array_equal(a, b)


def _activation(clf, image, layer, ch, pos):
    return feature_maps(clf, image[None], post_activation=True, layers=[layer])[layer][0, ch, pos[0], pos[1]]


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(layer=st.sampled_from(["conv1", "conv2"]), ch=st.integers(0, 31), j=st.integers(0, 4),
       seed=st.integers(0, 2 ** 16))
def test_the_patch_is_all_the_unit_sees(tops, layer, ch, j, seed):
    clf, x, found = tops
    t = found[layer]
    i, pos, (r0, r1, c0, c1) = t.indices[ch, j], t.positions[ch, j], t.boxes[ch, j]
    patch = t.patches[ch, j]
    inside = ~np.isnan(patch)
    np.testing.assert_array_equal(patch[inside], x[i, r0:r1, c0:c1].ravel())   # the image's crop
    assert inside.sum() == (r1 - r0) * (c1 - c0)
    value = _activation(clf, x[i], layer, ch, pos)
    assert value == t.values[ch, j] > 0
    rng = np.random.default_rng(seed)
    box = np.zeros((28, 28), bool)
    box[r0:r1, c0:c1] = True
    outside = np.where(box, x[i], rng.uniform(0, 1, (28, 28)))                    # every other pixel changed
    assert abs(_activation(clf, outside, layer, ch, pos) - value) <= 1e-12 * max(1.0, abs(value))
    moved = np.where(box, rng.uniform(0, 1, (28, 28)), x[i])                      # only the patch changed
    assert abs(_activation(clf, moved, layer, ch, pos) - value) > 1e-6


def test_top_activations_reject_bad_settings():
    clf = make_classifier()
    with pytest.raises(ValueError, match="--layer must be one of"):
        top_activations(clf, digits(1), layer="conv9")
    with pytest.raises(ValueError, match="--k must be an integer in 1..196"):
        top_activations(clf, digits(1), layer="conv2", k=197)


# --------------------------------------------------------------------------- embedding

def blobs(n=120, seed=0):
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 3
    return rng.normal(size=(3, 20))[labels] * 6 + rng.normal(size=(n, 20)), labels


def test_embed_shapes_and_seeds():
    f, labels = blobs()
    a = embed(f, "tsne", seed=0, max_iter=250)
    assert a.shape == (120, 2) and a.dtype == np.float64
    np.testing.assert_array_equal(a, embed(f, "tsne", seed=0, max_iter=250))
    # with PCA initialisation the seed only reaches scikit-learn's randomized PCA, not used for 120 x 20
    np.testing.assert_array_equal(a, embed(f, "tsne", seed=1, max_iter=250))
    p = embed(f, "pca", seed=0)
    np.testing.assert_array_equal(p, embed(f, "pca", seed=3))
    centred = f - f.mean(axis=0)
    u, s, _ = np.linalg.svd(centred, full_matrices=False)
    np.testing.assert_allclose(np.abs(p), np.abs(u[:, :2] * s[:2]), rtol=1e-8, atol=1e-8)
    assert knn_accuracy(p, labels) == 1.0
    assert knn_accuracy(a, labels) > 0.85          # 0.917 here: 250 iterations are only the exaggerated phase
    assert knn_accuracy(p, np.random.default_rng(0).permutation(labels)) < 0.6
    with pytest.raises(ValueError, match="--method must be one of tsne, pca"):
        embed(f, "umap")
    with pytest.raises(ValueError, match="perplexity must be in"):
        embed(f[:20], "tsne")


# --------------------------------------------------------------------------- the stages on a trained run

@pytest.fixture(scope="module")
def run(tmp_path_factory):
    os.environ.setdefault("NPCNN_DATA", "/work/shared/data/mnist")
    return Run.open(trained_run_dir(tmp_path_factory))


def _written(result, names):
    assert result.files == [os.path.join(result.folder, n) for n in names]   # the figure first, the .npz last
    assert all(os.path.isfile(f) for f in result.files)
    assert os.path.basename(result.folder) == "deeper"
    return load_npz(result.files[-1])


@pytest.mark.parametrize("method, limit, knn", [("pca", 2000, 0.65), ("tsne", 200, 0.85)])
def test_embedding_stage_separates_the_classes(run, method, limit, knn):
    r = deeper.embedding(run, method=method, limit=limit, progress=False)
    saved = _written(r, [f"embedding_{method}.png", f"embedding_{method}.npz"])
    assert saved["points"].shape == (limit, 2)
    np.testing.assert_array_equal(saved["labels"], run.test_data()[1][:limit])
    assert r.knn_accuracy == pytest.approx(float(saved["knn_accuracy"])) and r.knn_accuracy > knn
    assert (r.predicted != r.labels).mean() < 0.05
    assert "NN accuracy in the map" in r.describe()


def test_ablation_stage(run):
    r = deeper.ablation(run, layer="conv2", limit=1000, progress=False)
    saved = _written(r, ["ablation_conv2.png", "ablation_conv2.npz"])
    a = r.ablation
    images, labels = run.test_data()
    assert a.base_accuracy == pytest.approx(np.mean(run.classifier.predict(images[:1000] / 255.0) == labels[:1000]))
    assert saved["drop"].shape == (32,) and saved["class_drop"].shape == (32, 10)
    np.testing.assert_allclose(saved["drop"], a.base_accuracy - saved["accuracy"])
    assert a.drop.max() > 0
    assert saved["ranking"][0] == a.channels[np.argmax(a.drop)]
    assert "largest drops" in r.describe()


def test_dataset_examples_stage(run):
    r = deeper.dataset_examples(run, layer="conv2", k=9, limit=1000, progress=False)
    saved = _written(r, ["top_conv2.png", "top_conv2.npz"])
    assert saved["patches"].shape == (32, 9, 8, 8) and saved["indices"].max() < 1000
    assert (np.diff(saved["values"], axis=1) <= 0).all() and (saved["values"][:, 0] > 0).all()
    np.testing.assert_array_equal(saved["rf_size"], [8, 8])


@pytest.mark.parametrize("stage, bad, message", [
    ("embedding", {"method": "umap"}, "--method must be one of tsne, pca"),
    ("embedding", {"limit": 10}, "--limit must be an integer >= 50"),
    ("embedding", {"limit": 20_000}, r"--limit must be an integer in 50\.\.10000"),
    ("embedding", {"seed": -1}, "--seed must be an integer in 0"),
    ("ablation", {"layer": "fc1"}, "--layer must be one of conv1, conv2"),
    ("ablation", {"limit": 0}, "--limit must be an integer >= 1"),
    ("ablation", {"limit": 2.5}, "--limit must be an integer"),
    ("dataset_examples", {"k": 0}, r"--k must be an integer in 1\.\.100"),
    ("dataset_examples", {"k": 101}, r"--k must be an integer in 1\.\.100"),
    ("dataset_examples", {"layer": "conv3"}, "--layer must be one of"),
    ("dataset_examples", {"limit": 10_001}, r"--limit must be an integer in 1\.\.10000"),
])
def test_bad_settings_write_nothing(run, tmp_path, stage, bad, message):
    copy = tmp_path / "run"
    copy.mkdir()
    for name in ("model.npz", "config.json", "samples.json"):
        shutil.copy(run.file(name), copy / name)
    with pytest.raises(ValueError, match=message) as e:
        getattr(deeper, stage)(str(copy), progress=False, **bad)
    assert "\n" not in str(e.value)
    assert sorted(os.listdir(copy)) == ["config.json", "model.npz", "samples.json"]
