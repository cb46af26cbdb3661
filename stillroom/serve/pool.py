"""Students on demand: loaded on first use, answered in batches off the event loop, evicted least recently used.

Loading runs one at a time in the inference thread pool (a first burst of requests for a
task waits on one load). Requests to one student that arrive while it is busy are answered
together in one `predict` call (up to serve.max_batch), so concurrency costs batch slots, not
threads. A batch that raises is answered one by one, so one bad input fails alone.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import sys
import tempfile
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from stillroom.schema import Message, Prediction
from stillroom.serve.registry import Servable
from stillroom.students import Student, import_runtime, load_student

log = logging.getLogger("stillroom.serve")
Download = Callable[[Servable, Path], Path]  # a version's student folder, written under the given folder


def folder_mb(folder: Path) -> float:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) / 1e6


def pin_torch_threads(threads: int) -> None:
    """Torch's intra-op threads, per process: students share the cores with the event loop and each other.
    Only when a student brought torch in: ONNX and TF-IDF students never import it, and importing it for
    them would add most of a second to their cold load and hundreds of MB to the server."""
    torch = sys.modules.get("torch")
    if torch is not None and torch.get_num_threads() != threads:
        torch.set_num_threads(threads)


def predict_each(student: Student, prompts: Sequence[list[Message]]) -> list[Prediction | Exception]:
    """The whole batch in one call; when it raises, each prompt alone, so the error stays with its input."""
    try:
        return list(student.predict(list(prompts)))
    except Exception:
        if len(prompts) == 1:
            raise
    out: list[Prediction | Exception] = []
    for prompt in prompts:
        try:
            out.append(student.predict([prompt])[0])
        except Exception as error:
            out.append(error)
    return out


def _retrieve(future: asyncio.Future) -> None:
    if not future.cancelled():
        future.exception()


@dataclass
class Loaded:
    servable: Servable
    student: Student
    memory_mb: float
    load_s: float
    queue: asyncio.Queue = field(default_factory=asyncio.Queue)
    worker: asyncio.Task | None = None


class ModelPool:
    def __init__(
        self,
        cache_dir: Path,
        download: Download,
        executor: Executor,
        max_models: int,
        max_memory_mb: float,
        max_batch: int,
        torch_threads: int = 1,
        on_load: Callable[[Servable, float], None] | None = None,
    ):
        self.cache_dir = cache_dir
        self.download = download
        self.executor = executor
        self.max_models = max_models
        self.max_memory_mb = max_memory_mb
        self.max_batch = max_batch
        self.torch_threads = torch_threads
        self.on_load = on_load
        self.loaded: OrderedDict[tuple[str, str], Loaded] = OrderedDict()  # least recently used first
        self._load_lock = asyncio.Lock()

    async def predict(self, servable: Servable, prompt: list[Message], timeout_s: float) -> tuple[Prediction, bool]:
        """The student's answer and whether this request paid for loading it (a cold answer)."""
        loaded, cold = await self.get(servable)
        answer: asyncio.Future = asyncio.get_running_loop().create_future()
        answer.add_done_callback(_retrieve)  # an answer that came after its timeout is not an unhandled error
        loaded.queue.put_nowait((prompt, answer))
        if loaded.worker is None or loaded.worker.done():
            loaded.worker = asyncio.create_task(self._answer_batches(loaded))
        return await asyncio.wait_for(asyncio.shield(answer), timeout_s), cold

    async def get(self, servable: Servable) -> tuple[Loaded, bool]:
        if servable.key in self.loaded:
            self.loaded.move_to_end(servable.key)
            return self.loaded[servable.key], False
        async with self._load_lock:
            if servable.key in self.loaded:  # loaded while this request waited for the lock
                return self.loaded[servable.key], False
            loop = asyncio.get_running_loop()
            student, memory_mb, load_s = await loop.run_in_executor(self.executor, self._load, servable)
            loaded = Loaded(servable, student, memory_mb, load_s)
            self.loaded[servable.key] = loaded
            self._evict(keep=servable.key)
            if self.on_load is not None:
                self.on_load(servable, load_s)
            log.info("loaded %s (%s) in %.2f s, ~%.0f MB", servable.label, servable.kind, load_s, memory_mb)
            return loaded, True

    def prefetch(self, servable: Servable) -> None:
        """Download the version and import its libraries, without loading it: the first request then
        pays only for the weights. Run at start-up, off the event loop."""
        import_runtime(self._student_folder(servable))

    def _load(self, servable: Servable) -> tuple[Student, float, float]:
        started = time.perf_counter()
        rss_before = psutil.Process().memory_info().rss
        folder = self._student_folder(servable)
        student = load_student(folder)
        pin_torch_threads(self.torch_threads)
        grown_mb = (psutil.Process().memory_info().rss - rss_before) / 1e6
        return student, max(grown_mb, folder_mb(folder)), time.perf_counter() - started

    def _student_folder(self, servable: Servable) -> Path:
        """A version's files never change: downloaded once into the cache, moved in whole."""
        target = self.cache_dir / servable.model_name / servable.version
        if (target / "student.json").exists():
            return target
        target.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=target.parent, prefix=".download-") as scratch:
            folder = self.download(servable, Path(scratch))
            shutil.rmtree(target, ignore_errors=True)
            os.replace(folder, target)
        return target

    def _evict(self, keep: tuple[str, str]) -> None:
        while len(self.loaded) > 1 and (len(self.loaded) > self.max_models or self.memory_mb() > self.max_memory_mb):
            key = next(k for k in self.loaded if k != keep)
            self.drop(key)

    def drop(self, key: tuple[str, str]) -> None:
        loaded = self.loaded.pop(key, None)
        if loaded is not None:  # its batch worker still answers what is queued, then lets it go
            log.info("unloaded %s", loaded.servable.label)

    def retain(self, keys: set[tuple[str, str]]) -> None:
        """Unload versions that no longer serve (a new champion, a demotion)."""
        for key in [k for k in self.loaded if k not in keys]:
            self.drop(key)

    def memory_mb(self) -> float:
        return sum(loaded.memory_mb for loaded in self.loaded.values())

    async def _answer_batches(self, loaded: Loaded) -> None:
        loop = asyncio.get_running_loop()
        while not loaded.queue.empty():
            batch = [loaded.queue.get_nowait()]
            while len(batch) < self.max_batch and not loaded.queue.empty():
                batch.append(loaded.queue.get_nowait())
            batch = [(prompt, answer) for prompt, answer in batch if not answer.cancelled()]
            if not batch:
                continue
            try:
                results = await loop.run_in_executor(
                    self.executor, predict_each, loaded.student, [prompt for prompt, _ in batch]
                )
            except Exception as error:
                results = [error] * len(batch)
            for (_, answer), result in zip(batch, results, strict=True):
                if answer.done():
                    continue
                if isinstance(result, Exception):
                    answer.set_exception(result)
                else:
                    answer.set_result(result)
