"""The machine a benchmark runs on: CPU, versions, load, CPU time and steal.

Shared by the scripts in this directory (each imports it as ``_machine``).
"""

from __future__ import annotations

import functools
import importlib
import os
import platform
import resource
import subprocess

#: Import names of packages whose distribution name differs.
_MODULES = {"scikit-learn": "sklearn"}


@functools.cache
def _cpuinfo() -> tuple[str | None, frozenset[str]]:
    """The first model name and flags in /proc/cpuinfo, then in ``lscpu``."""
    model, flags = None, None
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "model name" and model is None:
                    model = value.strip()
                elif key == "flags" and flags is None:
                    flags = frozenset(value.split())
                if model is not None and flags is not None:
                    break
    except OSError:
        pass
    if model is None or flags is None:
        try:
            lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        except OSError:
            lscpu = ""
        for line in lscpu.splitlines():
            key, _, value = line.partition(":")
            if key == "Model name" and model is None:
                model = value.strip()
            elif key == "Flags" and flags is None:
                flags = frozenset(value.split())
    return model, flags or frozenset()


def cpu_model() -> str:
    """The CPU's model name, or ``platform.processor()``, or "unknown"."""
    return _cpuinfo()[0] or platform.processor() or "unknown"


def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags (empty when unknown)."""
    return _cpuinfo()[1]


def avx512_flags() -> list[str]:
    """The CPU's AVX-512 flags, sorted (empty without AVX-512)."""
    return sorted(flag for flag in cpu_flags() if flag.startswith("avx512"))


def has_avx512() -> bool:
    """Whether the CPU has AVX-512 Foundation (``avx512f``)."""
    return "avx512f" in cpu_flags()


def cpu_count() -> int | None:
    """Logical CPUs of the machine (``os.cpu_count()``)."""
    return os.cpu_count()


def memory_gib() -> float | None:
    """Total memory in GiB (None when /proc/meminfo is missing)."""
    try:
        with open("/proc/meminfo") as f:
            return int(f.readline().split()[1]) / 2**20
    except (OSError, ValueError, IndexError):
        return None


def version(name: str) -> str:
    """The version of ``python`` or of an installed package."""
    if name == "python":
        return platform.python_version()
    return importlib.import_module(_MODULES.get(name, name)).__version__


def versions(*names: str) -> str:
    """``"name version"`` for each of ``names``, joined by commas."""
    return ", ".join(f"{name} {version(name)}" for name in names)


def blas() -> str:
    """numpy's BLAS libraries as threadpoolctl sees them, with their threads."""
    import threadpoolctl

    return "; ".join(
        f"{os.path.basename(i['filepath'])} {i.get('version')} "
        f"({i.get('architecture')}, {i['num_threads']} threads)"
        for i in threadpoolctl.threadpool_info()
        if i["user_api"] == "blas"
    )


def load(digits: int = 2) -> str:
    """The 1, 5 and 15 minute load averages."""
    return " ".join(f"{v:.{digits}f}" for v in os.getloadavg())


def cpu_seconds() -> float:
    """CPU time of this process so far (all threads, user and system)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _cpu_times() -> list[int] | None:
    """The numbers on the ``cpu`` line of /proc/stat, or None."""
    try:
        with open("/proc/stat") as f:
            for line in f:
                if line.startswith("cpu "):
                    return [int(v) for v in line.split()[1:]]
    except (OSError, ValueError):
        pass
    return None


class Steal:
    """Steal (CPU time the hypervisor gave to other guests) between two points.

    ``start()`` and ``stop()``, or ``with Steal() as steal:``; ``percent`` is
    steal as a share of all CPU time in between, None when unknown.
    """

    def __init__(self) -> None:
        self._begin: list[int] | None = None
        self.percent: float | None = None

    def start(self) -> Steal:
        self._begin = _cpu_times()
        self.percent = None
        return self

    def stop(self) -> float | None:
        """Steal in percent of all CPU time since ``start()``, or None."""
        end = _cpu_times()
        if self._begin is None or end is None or len(end) < 8:
            return None
        # user nice system idle iowait irq softirq steal; guest time is
        # already counted in user and nice.
        deltas = [b - a for a, b in zip(self._begin[:8], end[:8])]
        total = sum(deltas)
        self.percent = 100 * deltas[7] / total if total > 0 else None
        return self.percent

    def line(self) -> str:
        """``steal during the run: 3.2%`` (or ``unknown``)."""
        if self.percent is None:
            return "steal during the run: unknown"
        return f"steal during the run: {self.percent:.1f}%"

    def __enter__(self) -> Steal:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
