"""Weights that travel: safetensors (PyTorch's key names), PyTorch nets as run folders, ONNX export.

The rooms, one job each::

    errors.py            ExchangeFileError (a file that cannot be used), MissingExtraError, the lazy imports
    safetensors_file.py  the safetensors format: header checked byte by byte, then read; atomic writes
    registry.py          the architectures by name ("seed-cnn", "seed-cnn-bn"), for --model NAME
    weights.py           a model's state dict <-> safetensors, every key, shape and dtype checked
    onnx_export.py       a model + its normalisation -> an ONNX graph (opset 17), and ONNX Runtime to run it
    runfolder.py         import_torch (safetensors -> run folder) and export_run (run folder -> files)

``safetensors``, ``onnx`` and ``onnxruntime`` are optional (``pip install "npcnn[exchange]"``):
they are imported inside the functions that need them. Nothing here imports torch or unpickles.
"""
from .errors import ExchangeFileError, MissingExtraError
from .onnx_export import OPSET, build_onnx, export_onnx, run_onnx
from .registry import ARCHITECTURES, Architecture
from .runfolder import ImportFolderError, export_run, import_torch
from .safetensors_file import read_safetensors, write_safetensors
from .weights import load_weights, save_weights

__all__ = ["ExchangeFileError", "MissingExtraError", "ImportFolderError", "OPSET", "ARCHITECTURES", "Architecture",
           "build_onnx", "export_onnx", "run_onnx", "import_torch", "export_run", "read_safetensors",
           "write_safetensors", "load_weights", "save_weights"]
