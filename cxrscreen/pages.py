"""Report pages' pixels (the explain stage's product), made while the scoring pass holds each film:
no film is read twice.

A page shows the film as the model saw it (border crop, percentile window, at the resolution it
was decoded for scoring) and its Grad-CAM mapped onto it through the chain's one
:class:`~cxrscreen.preprocess.Placement`. :class:`PageStore` receives every scored batch, makes the
pages that batch's films will need (their study is flagged, or every study with ``--reports all``)
and keeps them on disk under the state folder until the report stage draws them; memory stays at
one batch. Drawing them (colour map, overlay, PDF) is :mod:`cxrscreen.outputs`' job.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import shutil
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from cxrscreen.options import ReportPolicy
from cxrscreen.records import ImageRecord

if TYPE_CHECKING:  # torch and MONAI are imported by the functions that use them: a report stage
    import torch  # with no page to make imports neither

    from cxrscreen.model.files import LoadedModel
    from cxrscreen.model.inference import Runtime
    from cxrscreen.model.lazy import LazyModel
    from cxrscreen.prepare import Prepared
    from cxrscreen.preprocess import PreprocessSpec

log = logging.getLogger("cxrscreen")

DISPLAY_MAX = 900  # embed the display image at most this large (the scoring decode is ≥ 2 × model input)
CAM_BATCH = 8
#: Films of studies not (yet) flagged kept in memory in case a later film of the study flags it
#: (≈ 1.2 MB each at the default model size: the decoded film in float32 and the model input);
#: beyond this the oldest is dropped and, if needed after all, read again by the report stage.
MAX_PENDING = 64


# --------------------------------------------------------------------------- pages
@dataclass
class Page:
    """What one page shows: the film as the model saw it and its Grad-CAM on the same pixels."""

    record: ImageRecord
    display: np.ndarray | None = None  # grey [0, 1], display polarity, the model's crop, aspect kept
    cam: np.ndarray | None = None  # at display's shape, [0, 1]; None: no Grad-CAM (see note)
    note: str = ""  # why there is no image or no Grad-CAM, when the status does not say it


def shrink(img: np.ndarray, longest: int = DISPLAY_MAX) -> np.ndarray:
    """Area-resample a [0, 1] image so its long side is at most ``longest`` (aspect kept)."""
    h, w = img.shape[:2]
    scale = longest / max(h, w)
    if scale >= 1.0:
        return img
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return np.array(Image.fromarray(img.astype(np.float32)).resize(size, Image.Resampling.BOX), dtype=np.float32)


def make_pages(items: Sequence[tuple[ImageRecord, np.ndarray | None, torch.Tensor | None]], spec: PreprocessSpec,
               net: torch.nn.Module | None, rt: Runtime | None) -> list[Page]:
    """Pages for ``(record, film, model input)`` triples: display from the film, Grad-CAM (in batches,
    fp32) from the very tensor that was scored, mapped onto the display by the film's placement.
    Without ``net`` no Grad-CAM is made; ``rt`` says where ``net`` runs (default: the CPU)."""
    import torch

    from cxrscreen.explain import compute_cams
    from cxrscreen.model.inference import to_device
    from cxrscreen.preprocess import percentile_window, placement

    pages, cam_items = [], []
    for rec, film, tensor in items:
        page = Page(rec)
        if film is not None:
            pl = placement(tuple(film.shape), spec)
            page.display = shrink(percentile_window(pl.crop_film(film), spec.lower_percentile, spec.upper_percentile))
            if tensor is not None and net is not None:
                cam_items.append((page, pl, tensor))
        pages.append(page)
    for start in range(0, len(cam_items), CAM_BATCH):
        chunk = cam_items[start:start + CAM_BATCH]
        x = torch.stack([t for _, _, t in chunk])
        if rt is not None:
            x = to_device(x, rt)
        cams = compute_cams(net, x, np.stack([pl.valid for _, pl, _ in chunk]), batch_size=CAM_BATCH)
        for (page, pl, _), cam in zip(chunk, cams, strict=True):
            page.cam = pl.to_film(cam, page.display.shape)
    return pages


# --------------------------------------------------------------------------- the store
class PageStore:
    """Pages made during the scoring pass, kept on disk until the report stage draws them.

    :meth:`offer` gets each scored batch with its prepared films: pages are made for films whose
    study is flagged (an image of it is abnormal or casts a doubt; ``flagged`` policy) or for every
    film (``all``). A film of a study not flagged so far waits in memory (at most ``MAX_PENDING``)
    in case a later film of its study flags it. Pages are written to ``folder`` (display uint8 and
    Grad-CAM float16, ``.npz``), so memory stays at one batch; :meth:`take` hands one to the report
    stage and deletes it; :meth:`close` removes what is left.
    """

    def __init__(self, folder: Path, policy: ReportPolicy | str, lm: LoadedModel | LazyModel, rt: Runtime) -> None:
        self.folder, self.policy, self.lm, self.rt = folder, ReportPolicy(policy), lm, rt
        shutil.rmtree(folder, ignore_errors=True)  # a killed run's leftovers
        folder.mkdir(parents=True, exist_ok=True)
        self.flagged: set[str] = set()
        self.pending: OrderedDict[str, tuple[ImageRecord, np.ndarray | None, torch.Tensor | None]] = OrderedDict()
        self.seen: set[str] = set()  # paths of this run's films (pages made, or nothing to show)
        self._net: torch.nn.Module | None = None

    @property
    def net(self) -> torch.nn.Module:
        """The fp32 network Grad-CAM runs on (made on first use)."""
        if self._net is None:
            from cxrscreen.model.inference import prepare

            self._net = prepare(self.lm.net, self.rt)
        return self._net

    def _file(self, path: str) -> Path:
        return self.folder / f"{hashlib.sha256(path.encode()).hexdigest()[:24]}.npz"

    def offer(self, records: Sequence[ImageRecord], batch: Sequence[Prepared]) -> None:
        """A scored batch (``records[i]`` is ``batch[i]``'s record): make the pages it needs."""
        todo = []
        for rec, it in zip(records, batch, strict=True):
            key = rec.study_key
            if rec.flags_study and key not in self.flagged:
                self.flagged.add(key)
                todo += [self.pending.pop(p) for p in [p for p, v in self.pending.items() if v[0].study_key == key]]
            item = (rec, it.film, it.image)
            if self.policy is ReportPolicy.all or key in self.flagged:
                todo.append(item)
            elif it.film is not None:
                self.pending[rec.path] = item
                while len(self.pending) > MAX_PENDING:
                    self.pending.popitem(last=False)
            else:
                self.seen.add(rec.path)  # nothing to show: a page needs no pixels
        if todo:
            need_cam = any(t is not None for _, _, t in todo)
            for page in make_pages(todo, self.lm.spec, self.net if need_cam else None, self.rt):
                self.save(page)
            for it in batch:  # the films are no longer needed
                it.film = None

    def save(self, page: Page) -> None:
        """Keep ``page`` on disk until the report stage takes it (also a page made elsewhere: a scoring actor)."""
        self.seen.add(page.record.path)
        if page.display is None:
            return
        arrays = {"display": np.rint(page.display * 255.0).astype(np.uint8)}
        if page.cam is not None:
            arrays["cam"] = page.cam.astype(np.float16)
        with open(self._file(page.record.path), "wb") as fh:
            np.savez(fh, **arrays)

    def take(self, record: ImageRecord) -> Page | None:
        """This run's page of ``record`` (its file deleted), or ``None`` if the scoring pass made none
        (the film was scored by an earlier run, or dropped from the pending films): read it again."""
        if record.path in self.pending:
            rec, film, tensor = self.pending.pop(record.path)
            net = self.net if tensor is not None else None
            return make_pages([(record, film, tensor)], self.lm.spec, net, self.rt)[0]
        if record.path not in self.seen:
            return None
        page = Page(record)
        f = self._file(record.path)
        with contextlib.suppress(FileNotFoundError):
            with np.load(f) as z:
                page.display = z["display"].astype(np.float32) / 255.0
                page.cam = z["cam"].astype(np.float32) if "cam" in z else None
            f.unlink()
        return page

    def close(self) -> None:
        """Forget the pending films and remove the pages no report used."""
        self.pending.clear()
        shutil.rmtree(self.folder, ignore_errors=True)

