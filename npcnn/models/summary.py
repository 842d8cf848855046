"""Parameter and "neuron" counts, and a summary table, for any Sequential (nested blocks included)."""
from ..nn import Conv2d, Linear


def count_parameters(model):
    return int(sum(p.size for p in model.parameters()))


def layer_neurons(layer):
    """The report's "neurons" count: every conv kernel weight (out*in*kh*kw) and every fc output unit.

    This is the convention that gives the report's 10,014 for the reference
    net (32*1*3*3 + 32*32*3*3 + 500 + 10). A block (a Residual, a nested Sequential) counts the
    layers inside it.
    """
    if isinstance(layer, Conv2d):
        return int(layer.weight.size)
    if isinstance(layer, Linear):
        return layer.out_features
    return int(sum(layer_neurons(child) for _, child in layer.children()))


def count_neurons(model):
    return int(sum(layer_neurons(layer) for layer in model))


def one_line(layer):
    """``repr(layer)``, or for a block whose repr spans lines (a Residual) its type and what it holds:
    ``Residual(body=5 layers, shortcut=2 layers)``."""
    text = repr(layer)
    if "\n" not in text:
        return text
    parts = [f"{name}={len(child)} layers" if hasattr(child, "__len__") else f"{name}={type(child).__name__}"
             for name, child in layer.children()]
    return f"{type(layer).__name__}({', '.join(parts)})"


def summary_rows(model, input_shape=(1, 1, 28, 28)):
    """One dict per layer: index, name, output shape (batch dim dropped), parameters, neurons."""
    shape = tuple(input_shape)
    rows = []
    for i, layer in enumerate(model):
        if hasattr(layer, "output_shape"):
            shape = tuple(layer.output_shape(shape))
        rows.append({
            "index": i,
            "layer": one_line(layer),
            "output_shape": list(shape[1:]),
            "parameters": int(sum(p.size for p in layer.parameters())),
            "neurons": layer_neurons(layer),
        })
    return rows


def summary(model, input_shape=(1, 1, 28, 28)):
    """A printable table of each layer's output shape and parameter count, with totals."""
    rows = summary_rows(model, input_shape)
    width = max(len(r["layer"]) for r in rows) + 2
    lines = [f"{'#':>3}  {'layer':<{width}}{'output shape':<16}{'params':>10}", "-" * (width + 31)]
    for r in rows:
        shape = "x".join(map(str, r["output_shape"]))
        lines.append(f"{r['index']:>3}  {r['layer']:<{width}}{shape:<16}{r['parameters']:>10,}")
    lines.append("-" * (width + 31))
    lines.append(f"total parameters: {count_parameters(model):,}   neurons: {count_neurons(model):,}")
    return "\n".join(lines)
