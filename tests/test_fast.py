"""npcnn.fast.plan: the fast path's container behaves like the Sequential it runs, and owns nothing it should not."""
import gc
import weakref

import numpy as np
import pytest

from npcnn import fast, seed_cnn
from npcnn.classifier import Classifier
from npcnn.data import Normalization


def test_plan_is_a_sequential_for_everything_but_speed():
    m = seed_cnn(rng=0)
    net = fast.plan(m)
    assert net.eval() is net and not m.training          # modes go to the model, the plan stays in hand
    assert net.train() is net and m.training
    assert net.parameters() == m.parameters() and list(net.state_dict()) == list(m.state_dict())
    assert len(net) == len(m) and net[0] is m[0]
    steps = net.steps()
    assert [type(s).__name__ for s in steps[:3]] == ["ConvReLUPool", "ConvReLUPool", "FlatLinear"]
    assert (steps[2].flatten, steps[2].linear) == (m[6], m[7]) and steps[3] is m[8]
    assert all(not isinstance(s, fast.ConvReLUPool) for s in fast.plan(m, fuse=False).steps())


def test_plan_errors_are_clear():
    net = fast.plan(seed_cnn(rng=0))
    with pytest.raises(RuntimeError, match="before forward"):
        net.backward(np.ones((2, 10), np.float32))
    with pytest.raises(TypeError, match="numpy array"):
        net.forward([[1.0, 2.0]])
    import copy
    assert copy.copy(net).model is net.model             # no endless __getattr__ on a half-made copy


def test_a_plan_follows_its_model_and_frees_what_it_left():
    m = seed_cnn(rng=0)
    net = fast.plan(m)
    x = np.random.default_rng(0).random((3, 1, 28, 28), dtype=np.float32)
    net.forward(x)
    first = net.steps()[0]
    assert net.steps()[0] is first                        # kept, with its buffers, while the layers stay
    m.layers[0] = type(m[0])(1, 32, 3, padding=1, rng=1)  # a new conv: a new fused step, the old one goes
    net.forward(x)
    assert net.steps()[0] is not first and len(net._fused) == 3       # the two triples, Flatten -> Linear


def test_a_dropped_classifier_is_freed_with_its_plan():
    clf = Classifier(seed_cnn(rng=0), Normalization(0.1307, 0.3081))
    clf.logits(np.zeros((2, 28, 28), np.float32))
    body = weakref.ref(clf.body)
    del clf
    gc.collect()
    assert body() is None
