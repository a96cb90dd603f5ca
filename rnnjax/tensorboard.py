"""TensorBoard event files beside ``metrics.jsonl``, without TensorFlow.

:class:`EventLog` writes scalars (every numeric value of a metrics record),
images (the diagnostic PNGs) and text (language-model samples, translations)
with ``tensorboardX``; :func:`read_scalars` reads them back (tests, notebooks)::

    log = tensorboard.EventLog("runs/char_lm")
    log.scalars(100, {"loss": 1.9, "eval_valid_bits": 2.7})
    log.text("sample", "ROMEO: ...", 100)
    log.close()
    # tensorboard --logdir runs

Only process 0 of a multi-process run writes (the others get a log that writes
nothing), so a run's curves appear once.
"""

from __future__ import annotations

import glob
import math
import os
import struct
import warnings
from typing import Any, Mapping

import numpy as np

SUBDIR = "tensorboard"
SKIP = ("step",)


def _numeric(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.number)):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


class EventLog:
    """An event-file writer for one run: ``<workdir>/tensorboard/events.out.tfevents.*``.

    ``enabled=False`` (or a process other than 0) gives a log whose methods do nothing.
    """

    def __init__(self, workdir: str | None, *, enabled: bool = True, process_index: int = 0):
        self.logdir = os.path.join(workdir, SUBDIR) if workdir else None
        self._writer = None
        if enabled and self.logdir and process_index == 0:
            try:
                from tensorboardX import SummaryWriter
            except ImportError:  # a dependency, but a hand-made environment may lack it
                warnings.warn("no TensorBoard logs: tensorboardX is not installed "
                              "(pip install tensorboardX)", stacklevel=2)
                return
            self._writer = SummaryWriter(self.logdir, flush_secs=10)

    @property
    def active(self) -> bool:
        return self._writer is not None

    def scalars(self, step: int, record: Mapping[str, Any]) -> None:
        """Every finite number of ``record`` (a metrics.jsonl row) as a scalar at ``step``."""
        if self._writer is None:
            return
        for name, value in record.items():
            number = _numeric(value)
            if name not in SKIP and number is not None:
                self._writer.add_scalar(name, number, int(step))

    def log(self, record: Mapping[str, Any]) -> None:
        """A metrics record (with its ``step``) as scalars, flushed: an ``on_log`` hook of
        :func:`rnnjax.train.run`."""
        self.scalars(record["step"], record)
        self.flush()

    def image(self, tag: str, image: str | np.ndarray, step: int) -> None:
        """A PNG file, or an ``[H, W, C]`` uint8/float array, as an image at ``step``."""
        if self._writer is None:
            return
        if isinstance(image, str):
            import matplotlib.image as mpimg
            image = mpimg.imread(image)
        array = np.asarray(image)
        if array.dtype != np.uint8:
            array = (np.clip(array, 0, 1) * 255).astype(np.uint8)
        if array.ndim == 2:
            array = array[..., None]
        self._writer.add_image(tag, array[..., :3], int(step), dataformats="HWC")

    def text(self, tag: str, text: str, step: int) -> None:
        if self._writer is not None:
            self._writer.add_text(tag, text, int(step))

    def flush(self) -> None:
        if self._writer is not None:
            self._writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def __enter__(self) -> "EventLog":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _records(path: str):
    """The payloads of a TFRecord file (length, length CRC, data, data CRC; CRCs unchecked)."""
    with open(path, "rb") as f:
        while True:
            header = f.read(12)
            if len(header) < 12:
                return
            (length,) = struct.unpack("<Q", header[:8])
            data = f.read(length)
            f.read(4)
            if len(data) < length:
                return
            yield data


def read_events(logdir: str) -> dict[str, list[tuple[int, Any]]]:
    """Every summary value of the event files under ``logdir`` by tag: ``[(step, value)]``,
    where value is a float (scalars), ``"image"`` or the text."""
    from tensorboardX.proto import event_pb2

    out: dict[str, list[tuple[int, Any]]] = {}
    for path in sorted(glob.glob(os.path.join(logdir, "**", "events.out.tfevents.*"),
                                 recursive=True)):
        for data in _records(path):
            event = event_pb2.Event.FromString(data)
            for value in event.summary.value:
                kind = value.WhichOneof("value")
                if kind == "simple_value":
                    item: Any = value.simple_value
                elif kind == "image":
                    item = "image"
                elif kind == "tensor" and value.tensor.string_val:
                    item = value.tensor.string_val[0].decode()
                else:
                    continue
                tag = value.tag[:-len("/text_summary")] if value.tag.endswith(
                    "/text_summary") else value.tag
                out.setdefault(tag, []).append((int(event.step), item))
    return out


def read_scalars(logdir: str) -> dict[str, list[tuple[int, float]]]:
    """The scalars of the event files under ``logdir``: ``{tag: [(step, value), ...]}``."""
    return {tag: items for tag, items in read_events(logdir).items()
            if items and isinstance(items[0][1], float)}
