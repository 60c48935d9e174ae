"""A model whose metadata a run has at once and whose network it loads only if a film needs it.

A scan reads the model's metadata before it starts (the plan compares the weights' sha256 with the
ledger's; worklists, summary and DICOM results name the model): :class:`LazyModel` is that metadata.
Torch, MONAI, the weights, the runtime and the scoring network come only when asked for, once each,
in the thread that asks first; :meth:`LazyModel.start` asks for all of them in a background thread,
so they load while the run does other work (the plan, once it has found a file to score). A scan with
nothing to score never imports torch (docs: DESIGN.md, "Nothing is loaded that the run does not need").

Everything that imports torch runs in one thread, once (:meth:`LazyModel.wait_imported`): two
threads importing torch's package graph at the same time can see half-initialised modules.
"""

from __future__ import annotations

import contextlib
import sys
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Generic, TypeVar

from cxrscreen.model.meta import ModelInfo
from cxrscreen.options import Device, Precision

if TYPE_CHECKING:
    import torch

    from cxrscreen.model.files import LoadedModel
    from cxrscreen.model.inference import Runtime

T = TypeVar("T")


class _Once(Generic[T]):
    """``fn()``, computed by the first thread that asks while the others wait; an error is kept and
    raised to every caller."""

    def __init__(self, fn: Callable[[], T]) -> None:
        self._fn, self._lock = fn, threading.Lock()
        self._done = False
        self._value: T | None = None
        self._error: BaseException | None = None

    def __call__(self) -> T:
        with self._lock:
            if not self._done:
                try:
                    self._value = self._fn()
                except Exception as exc:  # kept for whoever asks: the background thread has no caller
                    self._error = exc
                self._done = True  # (an interrupt is not kept: it propagates, and a later call tries again)
        if self._error is not None:
            raise self._error
        return self._value  # type: ignore[return-value]

    @property
    def ready(self) -> bool:
        """Computed, without an error (never waits)."""
        return self._done and self._error is None


class LazyModel(ModelInfo):
    """A model's metadata now; its network, runtime and scoring network on first use.

    ``model``: the metadata (:func:`~cxrscreen.model.meta.read_model_info`), or a
    :class:`~cxrscreen.model.files.LoadedModel`, whose network is then used as it is.
    ``on_import``: called once torch and MONAI are imported, in that thread, before anything uses them
    (the run imports the stages that need torch there).

    Where a :class:`~cxrscreen.model.files.LoadedModel` is expected (``spec``, ``net``, ``sha256``…)
    this one serves: :attr:`net` loads the weights. :meth:`close` waits for a load in progress.
    """

    def __init__(self, model: ModelInfo, device: Device | str = Device.auto,
                 precision: Precision | str = Precision.auto, on_import: Callable[[], None] | None = None) -> None:
        super().__init__(model.meta, model.path)
        self.device, self.precision = device, precision
        files = sys.modules.get("cxrscreen.model.files")  # a LoadedModel exists only once that module is imported
        self._given = model if files is not None and isinstance(model, files.LoadedModel) else None
        self._on_import = on_import
        self._imports: _Once[None] = _Once(self._import)
        self._runtime: _Once[Runtime] = _Once(self._choose_runtime)
        self._loaded: _Once[LoadedModel] = _Once(self._load)
        self._scoring: _Once[torch.nn.Module] = _Once(self._build_scoring_net)
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ what is loaded, once each
    def _import(self) -> None:
        import cxrscreen.model.files  # noqa: F401 (torch, safetensors, MONAI's ResNet)
        import cxrscreen.model.inference  # noqa: F401

        if self._on_import is not None:
            self._on_import()

    def _choose_runtime(self) -> Runtime:
        self._imports()
        from cxrscreen.model.inference import runtime_for

        return runtime_for(self, self.device, self.precision)

    def _load(self) -> LoadedModel:
        self._imports()
        if self._given is not None:
            return self._given
        from cxrscreen.model.files import load_weights

        return load_weights(self)  # against this metadata: the sha256 the run planned and records with

    def _build_scoring_net(self) -> torch.nn.Module:
        rt = self._runtime()  # first: it imports torch, through _imports
        from cxrscreen.model.inference import scoring_net

        return scoring_net(self._loaded(), rt)

    # ------------------------------------------------------------------ the API
    def start(self) -> None:
        """Load everything in a background thread (imports, runtime, weights, scoring network), if not yet
        started. Its errors are raised to the thread that asks for what failed."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._preload, name="cxrscreen-model-load")
            self._thread.start()

    def _preload(self) -> None:
        with contextlib.suppress(BaseException):  # kept by _Once: raised to whoever asks
            self._scoring()

    @property
    def started(self) -> bool:
        """Whether :meth:`start` was called (the run had a film to score)."""
        return self._thread is not None

    def wait_imported(self) -> None:
        """Torch and MONAI are imported (by the loading thread, if started): other modules that import
        them may be imported now."""
        self._imports()

    @property
    def rt(self) -> Runtime:
        """The runtime (device, precision) chosen for this model: :func:`~cxrscreen.model.inference.runtime_for`."""
        return self._runtime()

    @property
    def loaded(self) -> LoadedModel:
        """The model with its weights (sha256 checked against the metadata)."""
        return self._loaded()

    @property
    def net(self) -> torch.nn.Module:
        """The loaded float network (Grad-CAM runs on it), as :attr:`LoadedModel.net`."""
        return self._loaded().net

    @property
    def scoring_net(self) -> torch.nn.Module:
        """The network that scores: :func:`~cxrscreen.model.inference.scoring_net` on :attr:`rt`."""
        return self._scoring()

    def runtime_description(self) -> str | None:
        """:meth:`Runtime.describe` if a runtime was chosen (something was scored or reported), else None."""
        return self._runtime().describe() if self._runtime.ready else None

    def close(self) -> None:
        """Wait for a background load in progress (a run leaves no thread of its own behind)."""
        if self._thread is not None:
            self._thread.join()

    def __enter__(self) -> LazyModel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
