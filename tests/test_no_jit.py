"""With ``NUMBA_DISABLE_JIT=1`` the kernels run as plain Python (to step through in a debugger):
a training step, an attack step and occlusion then give the jitted results, to rounding.

The no-JIT run happens in a subprocess (numba reads the setting at import); the jitted one in this
process, by the same function. Inputs are small: pure-Python kernels are slow. npcnn's own GEMM
blocks (``npcnn.parallel``, from batches of about 20 images) are switched on for the small batch
too, so that their NumPy fallback (``npcnn.blas.numpy_gemm_blocks``) is what runs without the JIT.
"""
import contextlib
import os
import subprocess
import sys

import numpy as np
import pytest

HERE = os.path.dirname(os.path.abspath(__file__))


@contextlib.contextmanager
def own_gemm_blocks():
    """npcnn's GEMM blocks used from the smallest batch on (normally from about 20 images)."""
    from npcnn import parallel
    saved = parallel.OWN_THREADS_MIN_VALUES
    parallel.OWN_THREADS_MIN_VALUES = 0
    try:
        yield
    finally:
        parallel.OWN_THREADS_MIN_VALUES = saved


def training_step(fast_path):
    """One step of the reference net in float64 on 8 random images: forward, NLLLoss, backward, Adam.
    ``fast_path``: through ``npcnn.fast.plan`` (the fused kernels), else the readable layers."""
    from npcnn import NLLLoss, fast, seed_cnn
    from npcnn.optim import Adam
    rng = np.random.default_rng(0)
    x, t = rng.random((8, 1, 28, 28)), rng.integers(0, 10, 8)
    model = seed_cnn(dtype=np.float64, rng=1)
    net = fast.plan(model) if fast_path else model
    loss_fn = NLLLoss()
    loss = loss_fn.forward(net.forward(x), t)
    net.backward(loss_fn.backward())
    Adam(model.parameters(), lr=1e-3).step()
    prefix = "fast" if fast_path else "plain"
    out = {f"{prefix}_loss": np.asarray(loss)}
    out.update({f"{prefix}_{name}": p.data.copy() for name, p in model.named_parameters()})
    return out


def results():
    """Everything compared: the training step both ways, one FGSM step, one occlusion map."""
    from test_features import digits, make_classifier

    from npcnn.analysis.attacks import fgsm
    from npcnn.analysis.occlusion import occlusion
    out = {}
    with own_gemm_blocks():
        for fast_path in (False, True):
            out.update(training_step(fast_path))
        clf = make_classifier()
        images = digits(2)
        adv = fgsm(clf, images, np.array([3, 8]), 0.1)
        out.update(fgsm_images=adv.images, fgsm_probabilities=adv.probabilities, fgsm_loss=adv.history)
        occ = occlusion(clf, digits(1, seed=1), patch=14, stride=14)
        out.update(occlusion_probability=occ.probability, occlusion_attribution=occ.attribution,
                   occlusion_predicted=occ.predicted)
    return out


def main(path):
    """The subprocess's side: compute :func:`results` (without the JIT), save them to ``path``."""
    import numba

    from npcnn import blas
    assert numba.config.DISABLE_JIT, "NUMBA_DISABLE_JIT=1 did not reach numba"
    calls = []
    real = blas.numpy_gemm_blocks
    blas.numpy_gemm_blocks = lambda *args: calls.append(1) or real(*args)
    out = results()
    out["numpy_gemm_blocks_calls"] = np.asarray(len(calls))
    np.savez(path, **out)


@pytest.fixture(scope="module")
def no_jit(tmp_path_factory):
    path = tmp_path_factory.mktemp("no_jit") / "results.npz"
    env = dict(os.environ, NUMBA_DISABLE_JIT="1", NUMBA_NUM_THREADS="2")   # 2: npcnn splits its GEMMs
    code = f"import sys; sys.path.insert(0, {HERE!r}); import test_no_jit; test_no_jit.main({str(path)!r})"
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    with np.load(path) as f:
        return dict(f)


@pytest.fixture(scope="module")
def jitted():
    return results()


def test_no_jit_runs_the_gemm_blocks_with_numpy(no_jit):
    assert no_jit["numpy_gemm_blocks_calls"] > 0


@pytest.mark.parametrize("prefix", ["plain", "fast"])
def test_training_step_without_jit_equals_the_jitted_one(no_jit, jitted, prefix):
    names = [k for k in jitted if k.startswith(prefix + "_")]
    assert len(names) == 9          # the loss and 8 parameters
    for name in names:
        np.testing.assert_allclose(no_jit[name], jitted[name], rtol=1e-10, atol=1e-13, err_msg=name)


def test_attack_step_without_jit_equals_the_jitted_one(no_jit, jitted):
    for name in ("fgsm_images", "fgsm_probabilities", "fgsm_loss"):
        np.testing.assert_allclose(no_jit[name], jitted[name], rtol=1e-10, atol=1e-13, err_msg=name)


def test_occlusion_without_jit_equals_the_jitted_one(no_jit, jitted):
    for name in ("occlusion_probability", "occlusion_attribution"):
        np.testing.assert_allclose(no_jit[name], jitted[name], rtol=1e-10, atol=1e-13, err_msg=name)
    np.testing.assert_array_equal(no_jit["occlusion_predicted"], jitted["occlusion_predicted"])
