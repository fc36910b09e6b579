"""Run an exported client extractor with ONNX Runtime (the device side of ``extractor="onnx"``).

    ext = OnnxExtractor("client.onnx", threads=1)
    z = ext(images)             # (N, 3, S, S) normalised float32 torch tensor -> (N, *feature_shape) tensor
    ext.check_bundle(bundle)    # refuses an ONNX file exported from another client bundle

The callable has the interface of ``ClientBundle.extractor`` (``torch.Tensor -> torch.Tensor``, no noise):
the client runtime adds the noise afterwards, exactly as with the torch extractor. numpy input is
accepted too (the result is still a torch tensor). ``onnxruntime`` is imported lazily and torch only
by :class:`OnnxExtractor`, so :func:`make_session` works in a process that never imports torch.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from privsplit.errors import MissingDependency

if TYPE_CHECKING:  # the device client imports this module: no bundle code at run time
    from privsplit.defenses.bundles import ClientBundle

__all__ = ["OnnxExtractor", "make_session", "onnxruntime_available"]


def onnxruntime_available() -> bool:
    """True when ``onnxruntime`` (the ``edge`` extra) imports."""
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def make_session(path: str | Path, *, threads: int = 1, optimization: str = "all") -> Any:
    """An ``onnxruntime.InferenceSession`` on the CPU with ``threads`` intra-op threads (0 = ORT default).

    One inter-op thread, sequential execution, full graph optimisation (Conv+BatchNorm fusion etc.).
    """
    try:
        import onnxruntime as ort
    except ImportError:
        raise MissingDependency("running ONNX models needs onnxruntime", extra="edge", packages=("onnxruntime",)) from None
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"ONNX model not found: {path} (create it with `privsplit export CLIENT_BUNDLE "
                                f"--format onnx --out {path.name}`)")
    levels = {"all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL, "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
              "none": ort.GraphOptimizationLevel.ORT_DISABLE_ALL}
    if optimization not in levels:
        raise ValueError(f"optimization must be one of {', '.join(levels)}, got {optimization!r}")
    if threads < 0:
        raise ValueError(f"threads must be >= 0 (0 = onnxruntime's default), got {threads}")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = int(threads)
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = levels[optimization]
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


class OnnxExtractor:
    """Callable ONNX Runtime extractor: ``images (N, 3, S, S) -> features (N, *feature_shape)``.

    Args:
        path: a client ``.onnx`` written by ``privsplit export`` (or any one-input, one-output model).
        threads: intra-op CPU threads (1 = the paper's single-core protocol; 0 = ORT default).

    Attributes:
        input_name, output_name: graph tensor names (``image`` / ``features`` for privsplit exports).
        input_shape: per-sample input shape ``[3, S, S]`` (ints where the file fixes them).
        feature_shape: per-sample output shape (``None`` entries for symbolic axes).
        metadata: the file's ``privsplit.*`` metadata (embedding id, layer, preprocess...), possibly empty.
    """

    def __init__(self, path: str | Path, threads: int = 1) -> None:
        import torch

        self._torch = torch
        self.path = Path(path)
        self.threads = int(threads)
        self.session = make_session(self.path, threads=self.threads)
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        if len(inputs) != 1 or len(outputs) != 1:
            raise ValueError(f"{self.path}: an extractor has one input and one output, this model has "
                             f"{len(inputs)} inputs and {len(outputs)} outputs")
        if inputs[0].type != "tensor(float)":
            raise ValueError(f"{self.path}: input {inputs[0].name} is {inputs[0].type}, expected tensor(float)")
        self.input_name, self.output_name = inputs[0].name, outputs[0].name
        self.input_shape = [d if isinstance(d, int) else None for d in inputs[0].shape[1:]]
        self.feature_shape = [d if isinstance(d, int) else None for d in outputs[0].shape[1:]]
        self.metadata: dict[str, str] = dict(self.session.get_modelmeta().custom_metadata_map)

    @property
    def embedding_id(self) -> str | None:
        """The embedding id stored in the ONNX metadata (checked against the bundle), if any."""
        return self.metadata.get("privsplit.embedding_id")

    @property
    def layer(self) -> str | None:
        """The split layer stored in the ONNX metadata, if any."""
        return self.metadata.get("privsplit.layer")

    @property
    def preprocess(self) -> dict[str, Any] | None:
        """The bundle's preprocessing stored in the ONNX metadata, as a dict, if any."""
        raw = self.metadata.get("privsplit.preprocess")
        return json.loads(raw) if raw else None

    def check_bundle(self, bundle: ClientBundle) -> None:
        """Raise ``BundleError`` unless this file was exported from ``bundle`` (a ``ClientBundle``)."""
        from privsplit.defenses.bundles import BundleError

        if self.embedding_id is None:
            raise BundleError(f"{self.path} carries no privsplit metadata: export it with `privsplit export`")
        sha = bundle.manifest.get("tensors_sha256")
        if self.embedding_id != bundle.embedding_id or self.metadata.get("privsplit.tensors_sha256") != sha:
            raise BundleError(f"{self.path} was exported from embedding {self.embedding_id[:12]}, not from this "
                              f"client bundle ({bundle.embedding_id[:12]}); re-export it from the bundle")

    def _array(self, x: Any) -> np.ndarray:
        torch = self._torch
        if isinstance(x, torch.Tensor):
            arr = x.detach().to(device="cpu", dtype=torch.float32).contiguous().numpy()
        else:
            arr = np.ascontiguousarray(x, dtype=np.float32)
        want = self.input_shape
        if arr.ndim != len(want) + 1 or any(w is not None and w != s for w, s in zip(want, arr.shape[1:])):
            shown = "x".join("?" if w is None else str(w) for w in want)
            raise ValueError(f"{self.path.name} expects a batch of shape (N, {shown.replace('x', ', ')}), got "
                             f"{tuple(arr.shape)}: resize/normalise images with the bundle's preprocess")
        return arr

    def __call__(self, x: Any) -> Any:
        out = self.session.run([self.output_name], {self.input_name: self._array(x)})[0]
        return self._torch.from_numpy(out)

    # nn.Module-like no-ops so the runtime can treat it like the torch extractor
    def eval(self) -> OnnxExtractor:
        """No-op returning ``self``, so it can stand in for a torch extractor."""
        return self

    def __repr__(self) -> str:
        return (f"OnnxExtractor({str(self.path)!r}, threads={self.threads}, input={self.input_name}{self.input_shape}, "
                f"output={self.output_name}{self.feature_shape})")
