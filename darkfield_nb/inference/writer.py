"""The writer thread of the pipeline: maps back to the input's size, one set at a time, then
its completion record; the model never waits for the disk."""

from __future__ import annotations

import queue
import threading
from pathlib import Path

import numpy as np

from darkfield_nb.inference import outputs, records
from darkfield_nb.inference.geometry import resize_mean, resize_sigma


class SetWriter(threading.Thread):
    """Takes ``(item, maps, seconds)`` jobs (None ends it): resamples the maps back to the input's
    size (sigma maps through their variance), writes the set (``outputs.write_set``: all files
    or none) and then its completion record. A failing set is recorded in ``self.failed`` by
    file name and the thread goes on; ``cfg`` is the run's PredictConfig. Several writers
    can share one queue (zlib compression and file I/O release the GIL)."""

    def __init__(self, out_dir: Path, cfg, key: dict, jobs: queue.Queue):
        super().__init__(daemon=True, name="darkfield-nb-writer")
        self.out_dir, self.cfg, self.key = out_dir, cfg, key
        self.jobs = jobs  # shared by all writer threads of a run
        self.failed: dict[str, str] = {}
        self.written: list[Path] = []
        self.error: BaseException | None = None

    def run(self) -> None:
        while True:
            job = self.jobs.get()
            if job is None:
                return
            try:
                self._write(*job)
            except Exception as exc:  # a full disk, a read-only folder, non-finite maps ...
                path = job[0]["path"]
                self.failed[str(path)] = f"{path}: outputs not written ({exc}); no partial set left"
            except BaseException as exc:  # KeyboardInterrupt and the like: stop the run
                self.error = exc
                return

    def _write(self, item: dict, maps: dict[str, np.ndarray], seconds: float) -> None:
        path, plan = item["path"], item["plan"]
        shape = plan.input_shape
        if not plan.identity:
            maps = {
                name: resize_mean(m, shape) if name == "darkfield" else resize_sigma(m, shape)
                for name, m in maps.items()
            }
        stem = path.stem
        preview = None
        if self.cfg.preview:
            title = f"{path.name}: {shape[0]} x {shape[1]} px, T = {self.cfg.samples}"
            preview = outputs.preview_png(item["image"], maps, title)
        records.remove_record(self.out_dir, stem)  # the set is incomplete until the new record
        files = outputs.write_set(self.out_dir, stem, maps, self.cfg.format, preview)
        row = {"id": stem, "input": str(path), "status": "ok", **plan.summary()}
        row.update(outputs.map_stats(maps))
        row.update(item.get("ood") or {})
        row.update(item.get("level") or {})
        row["seconds"] = round(seconds, 4)
        said = [w.split(": ", 1)[-1] for w in plan.warnings]
        if item.get("level_warning"):
            said.append(item["level_warning"])
        row["warnings"] = " | ".join(said)
        row["epistemic"] = outputs.EPISTEMIC_COLUMN[self.key.get("epistemic") or "mc"]
        records.write_record(
            self.out_dir,
            stem,
            {
                "key": self.key,
                "input": records.fingerprint(path, item["digest"]),
                "files": files,
                "row": row,
            },
        )
        self.written.append(path)
