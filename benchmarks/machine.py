"""What ran the benchmarks: CPU, cores, load, Python and the versions measured."""

from __future__ import annotations

import os
import platform
from importlib import metadata

PACKAGES = (
    "header-first-stream",
    "starlette",
    "anyio",
    "sse-starlette",
    "uvicorn",
    "httptools",
    "trio",
)


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo, else what `platform` knows."""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def load_average() -> str:
    try:
        one, five, fifteen = os.getloadavg()
    except OSError:
        return "unknown"
    return f"{one:.2f} / {five:.2f} / {fifteen:.2f}"


def versions() -> dict[str, str]:
    found: dict[str, str] = {}
    for name in PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = "not installed"
    return found


def describe() -> dict[str, str]:
    """A few lines that say what machine and software a result comes from."""
    return {
        "CPU": f"{cpu_model()}, {os.cpu_count()} logical CPUs ({usable_cpus()} usable)",
        "OS": platform.platform(),
        "Python": f"{platform.python_implementation()} {platform.python_version()}",
        "packages": ", ".join(f"{name} {version}" for name, version in versions().items()),
    }
