"""Zero-copy CPU loading: tensors are views into one memory mapping of the file.

Semantics (decided and tested):

* The file is mapped **private, copy-on-write** (``mmap.ACCESS_COPY``: ``MAP_PRIVATE``, read+write).
  Pages that are only read are the page cache's own pages, shared by every process that maps the
  file (N processes, one copy in RAM). A write to a tensor gives that process a private copy of the
  touched page: the file on disk (often an immutable cache blob) is never modified, and no process
  crashes with SIGSEGV as it would on a ``PROT_READ`` mapping.
* Every tensor keeps the mapping alive (torch storage / numpy ``base`` hold the ``mmap``).
* A tensor whose offset is not a multiple of its element size is copied (just that tensor).
* ``dtype=`` casts floating-point tensors (which necessarily copies); integer, bool and complex
  tensors keep their stored dtype (like ``from_pretrained(torch_dtype=...)``).

``populate`` makes every page resident before returning: by default ``MADV_POPULATE_READ`` from two
threads ("madvise"; touching one byte per page before Linux 5.14). The madvise variants measure alike
(docs/benchmarks.md, "Populate methods"); this one is the default because it is one syscall per 64 MiB,
needs no Python per page, and never dirties a page. ``MAP_POPULATE`` is not usable: on this private
writable mapping it write-faults every page (breaking copy-on-write: a full copy).

>>> tensors = load_file("model.safetensors")                  # doctest: +SKIP
>>> tensors["lm_head.weight"].data_ptr() != 0                  # a view of the page cache  # doctest: +SKIP
True
"""

from __future__ import annotations

import ctypes
import errno
import logging
import mmap
import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from warmstart.errors import InvalidCheckpointError
from warmstart.load.safetensors import DTYPES, Header, TensorInfo, read_header, spec_for

__all__ = ["MappedFile", "SafeOpen", "load_file", "populate_mapping", "POPULATE_METHODS"]

logger = logging.getLogger(__name__)

POPULATE_METHODS = ("madvise", "touch", "willneed")
_MADV_POPULATE_READ = getattr(mmap, "MADV_POPULATE_READ", 22)
_CHUNK = 64 << 20
_PAGE = mmap.PAGESIZE


def _numpy_dtype(spec_numpy: str) -> Any:
    import numpy as np

    if spec_numpy.startswith("ml_dtypes."):
        import ml_dtypes

        return np.dtype(getattr(ml_dtypes, spec_numpy.split(".", 1)[1]))
    return np.dtype(getattr(np, spec_numpy))


def torch_dtype(name: str) -> Any:
    """The torch dtype for a safetensors dtype name such as ``"BF16"``."""
    import torch

    attr = DTYPES[name].torch
    if attr is None or not hasattr(torch, attr):
        raise KeyError(name)
    return getattr(torch, attr)


def resolve_dtype(dtype: Any, framework: str) -> Any:
    """Accept ``torch.bfloat16``, ``"bfloat16"``, ``np.float16``, ``"BF16"``; return the framework's dtype."""
    if dtype is None:
        return None
    if isinstance(dtype, str):
        if dtype in DTYPES:
            return torch_dtype(dtype) if framework == "pt" else _numpy_dtype(DTYPES[dtype].numpy or "")
        if framework == "pt":
            import torch

            return getattr(torch, dtype.removeprefix("torch."))
    if framework == "pt":
        return dtype
    import numpy as np

    return _numpy_dtype(dtype) if isinstance(dtype, str) and dtype.startswith("ml_dtypes.") else np.dtype(dtype)


def _madvise(addr: int, length: int, advice: int) -> int:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.madvise.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
    if libc.madvise(ctypes.c_void_p(addr), ctypes.c_size_t(length), ctypes.c_int(advice)) != 0:
        return ctypes.get_errno()
    return 0


def populate_mapping(view: Any, method: str = "madvise", threads: int | None = None) -> str:
    """Make every page of ``view`` (a uint8 numpy array over an mmap) resident; return the method used.

    >>> populate_mapping(np.frombuffer(mm, np.uint8), "madvise")   # doctest: +SKIP
    'madvise'
    """
    n = int(view.nbytes)
    if n == 0:
        return method
    threads = threads or min(8, os.cpu_count() or 1)
    base = int(view.ctypes.data)
    chunks = [(off, min(_CHUNK, n - off)) for off in range(0, n, _CHUNK)]
    if method in ("willneed", "willneed+madvise"):
        _madvise(base - base % _PAGE, n + base % _PAGE, mmap.MADV_WILLNEED)
        method = "touch" if method == "willneed" else "madvise"
    if method == "madvise":
        start = base - base % _PAGE
        err = _madvise(start, min(_CHUNK, n + base % _PAGE), _MADV_POPULATE_READ)
        if err in (errno.EINVAL, errno.ENOSYS):
            logger.debug("MADV_POPULATE_READ unsupported (errno %s); touching pages", err)
            method = "touch"
        else:
            rest = [(off, min(_CHUNK, n - off)) for off in range(_CHUNK, n, _CHUNK)]

            def adv(c: tuple[int, int]) -> int:
                return _madvise(start + c[0], c[1] + (base % _PAGE if c[0] == 0 else 0), _MADV_POPULATE_READ)

            with ThreadPoolExecutor(threads) as ex:
                errs = [e for e in ex.map(adv, rest) if e]
            if err or errs:
                raise OSError(err or errs[0], f"madvise(MADV_POPULATE_READ) failed: {os.strerror(err or errs[0])}")
            return "madvise"
    if method != "touch":
        raise ValueError(f"populate={method!r}: choose one of {POPULATE_METHODS} or True/False")

    def touch(c: tuple[int, int]) -> int:
        return int(view[c[0]:c[0] + c[1]:_PAGE].max(initial=0))  # numpy releases the GIL here

    with ThreadPoolExecutor(threads) as ex:
        list(ex.map(touch, chunks))
    return "touch"


def castable(t: Any) -> bool:
    """``dtype=`` casts floating-point tensors only; integer, bool, complex and packed F4 stay as stored."""
    return bool(t.is_floating_point()) and "float4" not in str(t.dtype)


def torch_view(raw: Any, info: TensorInfo, path: str, name: str) -> Any:
    """View the uint8 tensor ``raw`` (exactly the tensor's bytes) as the tensor; copies only if misaligned."""
    import torch

    tdt = torch_dtype(info.dtype)
    shape = list(info.shape)
    if info.dtype == "F4":  # two values per byte: torch packs the last dimension
        if not shape or shape[-1] % 2:
            raise InvalidCheckpointError(f"{path}: tensor {name!r}: F4 needs an even last dimension "
                                         "to map to torch.float4_e2m1fn_x2; repack it")
        shape[-1] //= 2
    if info.nbytes == 0:
        return torch.empty(shape, dtype=tdt, device=raw.device)
    if raw.data_ptr() % tdt.itemsize:
        logger.debug("%s: %s is misaligned; copying it", path, name)
        raw = raw.clone()
    return raw.view(tdt).reshape(shape)


class MappedFile:
    """One safetensors file mapped copy-on-write; builds zero-copy tensors on demand.

    >>> mf = MappedFile("model.safetensors"); t = mf.tensor("embed.weight")   # doctest: +SKIP
    """

    def __init__(self, path: str | os.PathLike[str], *, header: Header | None = None) -> None:
        self.path = os.fspath(path)
        fd = os.open(self.path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        try:
            self.header = header or read_header(fd, name=self.path)
            if os.fstat(fd).st_size != self.header.file_size:
                raise OSError(f"{self.path}: file changed size while loading; retry")
            self.mm = mmap.mmap(fd, 0, access=mmap.ACCESS_COPY)
        finally:
            os.close(fd)
        self._np: Any = None
        self._pt: Any = None

    def bytes_np(self) -> Any:
        import numpy as np

        if self._np is None:
            self._np = np.frombuffer(self.mm, dtype=np.uint8)
        return self._np

    def bytes_pt(self) -> Any:
        import torch

        if self._pt is None:  # writable (copy-on-write) buffer: no warning, no copy
            self._pt = torch.frombuffer(self.mm, dtype=torch.uint8)
        return self._pt

    def populate(self, method: str = "madvise") -> str:
        data = self.bytes_np()[self.header.data_start:]
        return populate_mapping(data, method)

    def tensor(self, name: str, framework: str = "pt", dtype: Any = None) -> Any:
        """The tensor ``name`` as a view of the mapping (copied only when misaligned or cast)."""
        info = self.header.tensors.get(name)
        if info is None:
            raise KeyError(f"{self.path}: no tensor named {name!r}")
        spec = spec_for(self.path, name, info.dtype, framework)
        if framework == "pt":
            t = self._tensor_pt(name, info, spec.torch or "")
            return t if dtype is None or t.dtype == dtype or not castable(t) else t.to(dtype)
        t = self._tensor_np(info, spec.numpy or "")
        return t if dtype is None or t.dtype == dtype or t.dtype.kind not in "fV" else t.astype(dtype)

    def _tensor_pt(self, name: str, info: TensorInfo, attr: str) -> Any:
        return torch_view(self.bytes_pt()[info.start:info.end], info, self.path, name)

    def _tensor_np(self, info: TensorInfo, attr: str) -> Any:
        import numpy as np

        ndt = _numpy_dtype(attr)
        if info.nbytes == 0:
            return np.empty(info.shape, dtype=ndt)
        raw = self.bytes_np()[info.start:info.end]
        if info.start % ndt.itemsize:
            raw = raw.copy()
        return raw.view(ndt).reshape(info.shape)


def load_file(path: str | os.PathLike[str], *, framework: str = "pt", dtype: Any = None,
              populate: bool | str = False) -> dict[str, Any]:
    """Load every tensor of one file as zero-copy views (``framework`` "pt" or "numpy").

    >>> t = load_file("model.safetensors", populate=True)     # doctest: +SKIP
    """
    mf = MappedFile(path)
    if populate:
        mf.populate("madvise" if populate is True else str(populate))
    dt = resolve_dtype(dtype, framework)
    return {name: mf.tensor(name, framework, dt) for name in mf.header.tensors}


class _Slice:
    """A lazily indexed tensor: ``f.get_slice(name)[0:128, :]`` touches only the pages it reads."""

    def __init__(self, owner: SafeOpen, name: str) -> None:
        self._owner, self._name = owner, name
        self._info = owner._file().header.tensors[name]

    def get_shape(self) -> list[int]:
        return list(self._info.shape)

    def get_dtype(self) -> str:
        return self._info.dtype

    def __getitem__(self, index: Any) -> Any:
        return self._owner.get_tensor(self._name)[index]

    def __len__(self) -> int:
        return self._info.shape[0] if self._info.shape else 0


class SafeOpen:
    """A lazy handle on one file, like ``safetensors.safe_open``.

    >>> with SafeOpen("model.safetensors", framework="pt") as f:           # doctest: +SKIP
    ...     w = f.get_slice("lm_head.weight")[0:1024]
    ...     names = f.keys(); meta = f.metadata()
    """

    def __init__(self, path: str | os.PathLike[str], framework: str = "pt", device: str = "cpu",
                 *, populate: bool | str = False) -> None:
        if framework not in ("pt", "torch", "numpy", "np"):
            raise ValueError(f"framework={framework!r}: use 'pt' or 'numpy'")
        self.framework = "pt" if framework in ("pt", "torch") else "numpy"
        self.device = device
        self._mf: MappedFile | None = MappedFile(path)
        if populate:
            self._mf.populate("madvise" if populate is True else str(populate))

    def _file(self) -> MappedFile:
        if self._mf is None:
            raise ValueError("SafeOpen is closed; open the file again")
        return self._mf

    def keys(self) -> list[str]:
        return sorted(self._file().header.tensors)

    def offset_keys(self) -> list[str]:
        """Tensor names in file order (best for sequential reads)."""
        return sorted(self._file().header.tensors, key=lambda k: self._file().header.tensors[k].start)

    def metadata(self) -> dict[str, str]:
        return dict(self._file().header.metadata)

    def get_tensor(self, name: str) -> Any:
        t = self._file().tensor(name, self.framework)
        if self.framework == "pt" and self.device != "cpu":
            t = t.to(self.device)
        return t

    def get_slice(self, name: str) -> _Slice:
        if name not in self._file().header.tensors:
            raise KeyError(f"{self._file().path}: no tensor named {name!r}")
        return _Slice(self, name)

    def __iter__(self) -> Iterator[str]:
        return iter(self.keys())

    def close(self) -> None:
        """Forget the mapping; tensors already returned stay valid (they hold it)."""
        self._mf = None

    def __enter__(self) -> SafeOpen:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
