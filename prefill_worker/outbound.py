"""One request's outgoing cache transfer on its own thread: tensors are queued by the step
thread as each layer finishes and sent in order while the model computes the next layers."""

from __future__ import annotations

import contextlib
import os
import queue
import threading
import time
from concurrent.futures import Future

import torch

from engine.transfer.base import TransferDescriptor, TransferError, TransferSender

# Test hook (off unless set): seconds to sleep before sending each tensor, so a test can kill a
# worker mid-transfer.
SEND_DELAY_ENV = "DUET_TEST_SEND_DELAY_S"
_COMMIT = object()


class Outbound:
    def __init__(
        self, sender: TransferSender, descriptor: TransferDescriptor, deadline: float
    ) -> None:
        self.sender, self.descriptor, self.deadline = sender, descriptor, deadline
        self.done: Future[int] = Future()  # bytes sent, once committed
        self.bytes_sent = 0
        self._queue: queue.Queue[object] = queue.Queue()
        self._aborted = threading.Event()
        self._delay = float(os.environ.get(SEND_DELAY_ENV, "0") or 0)
        self._thread = threading.Thread(
            target=self._run, name=f"duet-send-{descriptor.request_id}", daemon=True
        )
        self._thread.start()

    def put(self, name: str, tensor: torch.Tensor) -> None:
        self._queue.put((name, tensor))

    def commit(self) -> None:
        self._queue.put(_COMMIT)

    def abort(self) -> None:
        self._aborted.set()
        self._queue.put(_COMMIT)  # wake the thread

    def _remaining(self) -> float:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise TransferError("prefill deadline passed during the cache transfer")
        return left

    def _run(self) -> None:
        try:
            self.sender.open(self.descriptor, self._remaining())
            while True:
                item = self._queue.get(timeout=self._remaining())
                if self._aborted.is_set():
                    raise TransferError("aborted")
                if item is _COMMIT:
                    self.sender.commit(self.sender.manifest(first_token=-1))
                    break
                name, tensor = item  # type: ignore[misc]
                if self._delay:
                    time.sleep(self._delay)
                self.sender.send(name, tensor)
                self.bytes_sent += tensor.numel() * tensor.element_size()
        except queue.Empty:
            self._fail(TransferError("prefill deadline passed waiting for layers"))
        except Exception as exc:
            self._fail(exc)
        else:
            self.done.set_result(self.bytes_sent)
        finally:
            self.sender.close()

    def _fail(self, exc: BaseException) -> None:
        with contextlib.suppress(Exception):  # the peer may be gone; its lease covers it
            self.sender.abort()
        self.done.set_exception(exc)
