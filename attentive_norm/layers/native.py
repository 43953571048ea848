"""The native CPU kernel of the AN layers' inference forward (``csrc/attentive_norm_cpu.cpp``).

In eval an AN layer is a per-instance affine map whose coefficients need the per-instance moments and
about forty small N×C operations (pooling, attention, mixture, standardisation). As PyTorch operators
that costs two passes over the input and forty dispatches, about 1 ms per layer inside a network, where
BatchNorm costs one pass. The kernel does it in one call, instance by instance (moments, N×C maths,
then the affine map while the instance is still in cache).

It is compiled on first use with ``torch.utils.cpp_extension`` (about 25 s, once per machine and
torch version; ``make install`` does it ahead) and cached under ``TORCH_EXTENSIONS_DIR``
(default ``~/.cache/torch_extensions``). Where it cannot be built (no C++ compiler) the layers keep
the PyTorch route, with one warning; ``ATTENTIVE_NORM_NATIVE=0`` turns it off. It runs only where no
gradient is recorded, on CPU tensors, for layers whose statistics are not being learned and whose
head is one of the conv heads (``mlp_hsigmoid`` and forward hooks on the head take the PyTorch route).
"""

from __future__ import annotations

import hashlib
import logging
import os
import platform
import threading
from pathlib import Path
from types import ModuleType

import torch
from torch import Tensor, nn

from .attention import AttentionHead
from .fused import plain_ops

__all__ = ["NATIVE_ENV", "native_available", "native_eval_forward", "native_status"]

NATIVE_ENV = "ATTENTIVE_NORM_NATIVE"
"""Set to ``0`` to never build or use the native kernel."""

_SOURCE = Path(__file__).with_name("csrc") / "attentive_norm_cpu.cpp"
_CFLAGS = ("-O3", "-march=native", "-fopenmp")
_POOLINGS = {"mean": 0, "mean_rsqrt_var": 1}
_GATES = {"hsigmoid": 0, "sigmoid": 1, "softmax": 2}
_DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)

_log = logging.getLogger(__name__)
_lock = threading.Lock()
_state: dict[str, object] = {}  # "loaded": bool, "error": str, once the first build was tried


def _cpu_signature() -> str:
    """The CPU model and flags, which ``-march=native`` compiles for (a cache shared by different
    machines gets one build each)."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return platform.processor() or platform.machine()
    keep = [line for line in lines if line.startswith(("model name", "flags"))][:2]
    return "\n".join(keep) or platform.machine()


def _build_name() -> str:
    digest = hashlib.sha256()
    for part in (_SOURCE.read_bytes(), torch.__version__.encode(), " ".join(_CFLAGS).encode()):
        digest.update(part)
    digest.update(_cpu_signature().encode())
    return f"attentive_norm_cpu_{digest.hexdigest()[:12]}"


def _ninja_on_path() -> None:
    """torch's builder runs ``ninja`` from PATH; the ``ninja`` package's binary sits in the environment's
    bin folder, which is not on PATH when the interpreter is called by its full path."""
    try:
        import ninja
    except ImportError:
        return
    folder = str(getattr(ninja, "BIN_DIR", ""))
    if folder and folder not in os.environ.get("PATH", "").split(os.pathsep):
        os.environ["PATH"] = folder + os.pathsep + os.environ.get("PATH", "")


def _import_cpp_extension() -> ModuleType:
    """``torch.utils.cpp_extension``, imported without its CUDA-discovery warning ("No CUDA runtime is
    found, using CUDA_HOME=..." on any machine with nvcc and no GPU): the kernel is CPU-only."""
    logger = logging.getLogger("torch.utils.cpp_extension")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        from torch.utils import cpp_extension
    finally:
        logger.setLevel(level)
    return cpp_extension


def _load() -> None:
    cpp_extension = _import_cpp_extension()
    _ninja_on_path()
    name = _build_name()
    folder = Path(cpp_extension._get_build_directory(name, verbose=False))
    if not any(folder.glob(f"{name}*.so")):
        _log.warning("attentive-norm: compiling the native CPU kernel (once per machine, about 25 s)")
    cpp_extension.load(
        name=name,
        sources=[str(_SOURCE)],
        extra_cflags=list(_CFLAGS),
        extra_ldflags=["-fopenmp"],
        is_python_module=False,
        with_cuda=False,
        verbose=False,
    )


def native_available() -> bool:
    """True once the kernel is loaded, building it on the first call; False (with one warning) where
    it cannot be built, or when ``ATTENTIVE_NORM_NATIVE=0``."""
    if "loaded" in _state:
        return bool(_state["loaded"])
    with _lock:
        if "loaded" not in _state:
            if os.environ.get(NATIVE_ENV, "1") == "0":
                _state.update(loaded=False, error=f"disabled by {NATIVE_ENV}=0")
            else:
                try:
                    _load()
                    _state.update(loaded=True, error="")
                except Exception as error:  # no compiler, no ninja, a failed build: keep the torch route
                    _state.update(loaded=False, error=f"{type(error).__name__}: {error}")
                    _log.warning(
                        "attentive-norm: native CPU kernel unavailable, AN inference takes the PyTorch "
                        "route (%s)",
                        _state["error"],
                    )
    return bool(_state["loaded"])


def native_status() -> str:
    """``"native"`` or ``"pytorch (<why>)"``: which inference route CPU layers take (benchmarks record it)."""
    return "native" if native_available() else f"pytorch ({_state['error']})"


def _hooked(module: nn.Module) -> bool:
    return bool(module._forward_hooks or module._forward_pre_hooks)


def native_eval_forward(
    x: Tensor,
    head: AttentionHead,
    mixture_weight: Tensor,
    mixture_bias: Tensor,
    standardisation: tuple[Tensor | None, Tensor | None, int, float],
) -> Tensor | None:
    """The layer's inference output from the native kernel, or None where the kernel does not apply
    (gradients recorded, under ``torch.compile`` or a functorch transform, not a CPU tensor,
    unsupported dtype, layout, head or hooks; kernel unavailable).

    ``standardisation`` is ``(running_mean, running_var, num_groups, eps)``: ``num_groups`` 0
    standardises with the running statistics (BatchNorm in eval), otherwise per instance and group
    (GroupNorm). The head's tensors are read from the module dictionaries directly:
    ``nn.Module.__getattr__`` costs about 1 µs per access, as much as the kernel on a small map."""
    if (
        torch.is_grad_enabled()
        or plain_ops()
        or x.device.type != "cpu"
        or x.dtype not in _DTYPES
        or head._parameters.get("hidden_weight") is not None
        or _hooked(head)
        or nn.modules.module._global_forward_hooks
        or nn.modules.module._global_forward_pre_hooks
        or not (x.is_contiguous() or x.is_contiguous(memory_format=torch.channels_last))
        or not native_available()
    ):
        return None
    params = head._parameters
    norm = head._modules.get("norm")  # None-valued attributes are not in _modules
    if norm is None:
        logits: tuple = (None, None, None, None, 0.0)
    else:
        buffers, norm_params = norm._buffers, norm._parameters
        if (norm.training and not norm.freeze_stats) or buffers["running_mean"] is None or _hooked(norm):
            return None  # the logit BatchNorm learns batch statistics
        logits = (
            buffers["running_mean"],
            buffers["running_var"],
            norm_params["weight"],
            norm_params["bias"],
            norm.eps,
        )
    running_mean, running_var, num_groups, eps = standardisation
    return torch.ops.attentive_norm.eval_forward(
        x,
        running_mean,
        running_var,
        num_groups,
        eps,
        _POOLINGS[head.pooling],
        head.pooling_eps,
        params["weight"],
        params["bias"],
        *logits,
        _GATES[head.head.rsplit("_", 1)[1]],
        mixture_weight,
        mixture_bias,
    )
