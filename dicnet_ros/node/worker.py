"""The node's one inference thread: newest frame of every camera, batched through one model, fairly.

Why one worker for all cameras: the runtime (ONNX Runtime threads, a TensorRT engine and its CUDA stream) is
the scarce resource; N workers would fight over it, and N sessions would hold N copies of the weights. Each
round takes the waiting frame of every camera that has one (the newest: a camera's slot keeps only that), so
a camera that stops publishes nothing and stalls nobody, and frames of one size run as ONE batch through the
graph (``AnomalyModel.infer_batch``). With ``max_batch`` below the number of waiting cameras, the cameras that
have waited longest go first, so under load every camera is served in turn and none starves. Publishing a
round's results (message building, colour maps, DDS) runs on a second thread while the next round is inferred;
at most one round waits between the two, so a slow consumer slows inference instead of building a backlog.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Sequence
from typing import Any

from dicnet_ros.inference.base import AnomalyModel
from dicnet_ros.node.camera import CameraPipeline, Frame


class InferenceWorker:
    """A thread that runs ``model`` on the cameras' waiting frames until ``stop``."""

    def __init__(self, model: AnomalyModel, cameras: Sequence[CameraPipeline], max_batch: int = 0,
                 name: str = "anomaly_inference") -> None:
        self.model = model
        self.cameras = list(cameras)
        self.max_batch = int(max_batch)
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._results: queue.Queue[list[tuple[CameraPipeline, Frame, Any]] | None] = queue.Queue(maxsize=1)
        self._publisher = threading.Thread(target=self._publish, name=f"{name}_publish", daemon=True)

    def start(self) -> None:
        self._thread.start()
        self._publisher.start()

    def notify(self) -> None:
        """A camera has a frame waiting (called from the executor's callbacks)."""
        self._wake.set()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout=timeout)
        if self._publisher.is_alive():
            self._results.put(None)
            self._publisher.join(timeout=timeout)

    def _due(self) -> list[CameraPipeline]:
        """Cameras with a waiting frame, longest-waiting first, at most ``max_batch`` of them."""
        waiting = [(c.waiting_since, i, c) for i, c in enumerate(self.cameras) if c.waiting_since is not None]
        waiting.sort(key=lambda item: (item[0], item[1]))
        due = [c for _, _, c in waiting]
        return due[: self.max_batch] if self.max_batch > 0 else due

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(timeout=0.2)
            self._wake.clear()
            while not self._stop.is_set():
                due = self._due()
                if not due:
                    break
                self.run_round(due)

    def run_round(self, due: Sequence[CameraPipeline]) -> None:
        """Take, decode and infer (one batch per image size) the waiting frames of ``due``; hand them to publishing."""
        frames: list[tuple[CameraPipeline, Frame]] = []
        for camera in due:
            item = camera.take()
            if item is None:
                continue
            try:
                frame = camera.prepare(*item)
            except Exception as exc:  # never let one frame kill the worker
                camera.failed(exc)
                continue
            if frame is not None:
                frames.append((camera, frame))
        if not frames:
            return
        try:
            results: list[Any] = self.model.infer_batch([frame.model_input for _, frame in frames])
        except Exception as exc:  # the whole batch failed: each camera counts and reports it
            for camera, _ in frames:
                camera.failed(exc)
            return
        done = [(camera, frame, result) for (camera, frame), result in zip(frames, results, strict=True)]
        while not self._stop.is_set():
            try:
                self._results.put(done, timeout=0.2)
                return
            except queue.Full:
                continue

    def _publish(self) -> None:
        while True:
            done = self._results.get()
            if done is None:
                return
            for camera, frame, result in done:
                try:
                    camera.finish(frame, result)
                except Exception as exc:
                    camera.failed(exc)
