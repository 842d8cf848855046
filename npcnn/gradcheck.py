"""Finite-difference gradient checks, for learners and for the tests.

``gradcheck(module, x)`` compares the gradients a module's ``backward``
computes with central differences ``(f(a + h) - f(a - h)) / 2h`` of the
scalar ``f = sum(r * module(x))`` for a fixed random ``r``: with respect to
the input and to every Parameter. It needs float64 (in float32 the
differences drown in rounding) and returns a verdict with the worst relative
error; on failure it prints both gradients side by side.
"""
from dataclasses import dataclass, field

import numpy as np

from .nn.init import as_generator


@dataclass
class GradcheckResult:
    ok: bool
    max_rel_error: float
    errors: dict = field(default_factory=dict)  # name -> worst relative error of that tensor
    skipped: dict = field(default_factory=dict)  # name -> entries skipped because they sit on a kink

    def __bool__(self):
        return self.ok


def _relative_error(analytic, numeric, floor):
    return np.abs(analytic - numeric) / np.maximum(np.maximum(np.abs(analytic), np.abs(numeric)), floor)


def _check(f, tensors, h, tol, floor, max_checks, rng, verbose, kink_tol=1e-3):
    """Compare each (name, array, analytic_grad) in ``tensors`` against central differences of ``f()``."""
    errors, skipped, report = {}, {}, []
    for name, array, analytic in tensors:
        flat_analytic = analytic.reshape(-1)
        indices = np.arange(array.size)
        if max_checks is not None and array.size > max_checks:
            indices = np.sort(rng.choice(array.size, size=max_checks, replace=False))
        numeric = np.empty(len(indices))
        kink = np.zeros(len(indices), dtype=bool)
        flat = array.reshape(-1)  # a view: perturbing it perturbs the array f() reads
        f_zero = f()
        for k, i in enumerate(indices):
            original = flat[i]
            flat[i] = original + h
            f_plus = f()
            flat[i] = original - h
            f_minus = f()
            flat[i] = original
            numeric[k] = (f_plus - f_minus) / (2 * h)
            # A ReLU or max-pool switching inside [a - h, a + h] makes the two
            # one-sided slopes disagree: there the function has no derivative
            # to compare with, so the entry is skipped (and counted).
            right, left = (f_plus - f_zero) / h, (f_zero - f_minus) / h
            kink[k] = abs(right - left) > kink_tol * max(abs(right), abs(left), floor)
        skipped[name] = int(kink.sum())
        if skipped[name] > len(indices) // 2:
            report.append(f"gradcheck: {name}: {skipped[name]} of {len(indices)} entries sit on a kink; "
                          f"move the input away from ReLU/max-pool switching points")
        indices, numeric = indices[~kink], numeric[~kink]
        rel = _relative_error(flat_analytic[indices], numeric, floor)
        errors[name] = float(rel.max()) if rel.size else 0.0
        if errors[name] > tol:
            worst = np.argsort(rel)[::-1][:5]
            report.append(f"gradcheck: {name}: worst relative error {errors[name]:.3e} (tolerance {tol:.0e})")
            for w in worst:
                report.append(
                    f"    index {tuple(int(i) for i in np.unravel_index(indices[w], array.shape))}: "
                    f"analytic {flat_analytic[indices[w]]:+.10e}  numeric {numeric[w]:+.10e}"
                )
    result = GradcheckResult(ok=not report, max_rel_error=max(errors.values(), default=0.0), errors=errors,
                             skipped=skipped)
    if report and verbose:
        print("\n".join(report))
    return result


def _require_float64(what, arrays):
    for name, a in arrays:
        if a.dtype != np.float64:
            raise TypeError(f"gradcheck: {what} {name} is {a.dtype}; finite differences need float64 "
                            f"(build the layer with dtype=np.float64)")


def gradcheck(module, x, *, h=1e-6, tol=1e-4, floor=1e-4, max_checks=None, rng=0, verbose=True):
    """Check ``module.backward`` against finite differences, for the input and every Parameter.

    Parameters
    ----------
    module : Module
        Any layer or Sequential with float64 parameters. Stochastic layers
        (Dropout in training mode) cannot be checked this way.
    x : ndarray
        The input; converted to float64.
    h : float
        Finite-difference step.
    tol : float
        Largest relative error ``|a - n| / max(|a|, |n|, floor)`` allowed.
        The ``floor`` keeps gradients that are truly zero (rounding noise of
        ~1e-10 on both sides) from reading as a 100 % error.
    max_checks : int, optional
        Check at most this many randomly chosen entries per tensor (a full
        check of a large net costs two forward passes per weight).
    """
    x = np.array(x, dtype=np.float64)
    params = list(module.named_parameters())
    _require_float64("parameter", [(n, p.data) for n, p in params])
    rng = as_generator(rng)
    y = module.forward(x)
    r = rng.standard_normal(y.shape)
    module.zero_grad()
    dx = module.backward(r.copy())
    tensors = [("input", x, dx)]
    for name, p in params:
        grad = p.grad if p.grad is not None else np.zeros_like(p.data)
        tensors.append((name, p.data, grad.copy()))
    return _check(lambda: float(np.sum(module.forward(x) * r)), tensors, h, tol, floor, max_checks, rng, verbose)


def gradcheck_loss(loss, x, target, *, h=1e-6, tol=1e-4, floor=1e-4, verbose=True):
    """Check ``loss.backward()`` (gradient of the scalar loss with respect to its input)."""
    x = np.array(x, dtype=np.float64)
    loss.forward(x, target)
    analytic = loss.backward().copy()
    return _check(lambda: float(loss.forward(x, target)), [("input", x, analytic)], h, tol, floor, None,
                  as_generator(0), verbose)
