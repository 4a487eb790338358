"""What the GPU can do and how busy it is, through NVIDIA's NVML (nvidia-ml-py); every function answers None on a
machine without an NVIDIA GPU or driver, so CPU runs simply skip what needs one."""

from __future__ import annotations

import threading

BF16_MIN_CAPABILITY = (8, 0)  # Ampere and newer run bfloat16 matrix math natively


def resolve_mixed_precision(setting: str | None, capability: tuple[int, int] | None) -> str | None:
    """The dtype policy a trial uses: ``auto`` is mixed_bfloat16 on a GPU that supports it, float32 elsewhere."""
    if setting != "auto":
        return setting
    return "mixed_bfloat16" if capability is not None and capability >= BF16_MIN_CAPABILITY else None


def _nvml():
    try:
        import pynvml

        pynvml.nvmlInit()
        return pynvml
    except Exception:  # no library, no driver, no device: there is nothing to ask
        return None


def compute_capability() -> tuple[int, int] | None:
    """CUDA compute capability of the first GPU this process may use (Ray sets CUDA_VISIBLE_DEVICES), or None."""
    import os

    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and not visible.strip():
        return None
    nvml = _nvml()
    if nvml is None:
        return None
    try:
        first = visible.split(",")[0].strip() if visible else "0"
        handle = (
            nvml.nvmlDeviceGetHandleByIndex(int(first)) if first.isdigit() else nvml.nvmlDeviceGetHandleByUUID(first)
        )
        return tuple(nvml.nvmlDeviceGetCudaComputeCapability(handle))
    except Exception:
        return None


class BusySampler:
    """Samples every GPU's utilisation (NVML's % of time a kernel ran) in a thread while a block runs:
    ``with BusySampler() as s: ...; s.mean`` is the average over samples and GPUs, None without GPUs."""

    def __init__(self, interval: float = 0.5):
        self.interval, self.samples = interval, []
        self._stop = threading.Event()
        self._nvml = _nvml()
        count = self._nvml.nvmlDeviceGetCount() if self._nvml else 0
        self._handles = [self._nvml.nvmlDeviceGetHandleByIndex(i) for i in range(count)]
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.samples += [self._nvml.nvmlDeviceGetUtilizationRates(h).gpu for h in self._handles]

    def __enter__(self) -> BusySampler:
        if self._handles:
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    @property
    def mean(self) -> float | None:
        return sum(self.samples) / len(self.samples) if self.samples else None

    @property
    def devices(self) -> int:
        return len(self._handles)
