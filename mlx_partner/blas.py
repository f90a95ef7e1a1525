"""A fast, safe BLAS for MLX's CPU backend on Linux.

The Linux `mlx[cpu]` wheel links a reference BLAS (a 1024x1024 float32 matmul: ~5 GFLOPS on the
development machines) while OpenBLAS gives 50-350 GFLOPS. Symbols can only be swapped before the
dynamic loader resolves them, so the console entry point re-executes itself once with the library
in LD_PRELOAD.

A library built for another CPU dies with "Illegal instruction" (cmeel-openblas 0.3.31 is a
SKYLAKEX build: AVX-512 only), so no library is ever preloaded before a child process has loaded
it, run MLX matmuls through it and compared them with numpy, under a time-out. The verdict is
cached under the user cache, keyed by the library file and the CPU, so the probe costs once per
machine. Candidates, first that passes wins:

1. `MLX_PARTNER_BLAS=/path/libopenblas.so.0`, when set (the only candidate then);
2. a system OpenBLAS found through `ldconfig` (Debian/Ubuntu's `libopenblas0-pthread` is built
   with DYNAMIC_ARCH: it picks its kernel for the CPU it runs on);
3. the `cmeel-openblas` wheel (pinned to 0.3.29, a ZEN build: AVX2 kernels, which run on every
   x86-64 CPU since 2013, Intel and AMD, AVX-512 ones included; on arm64 an ARMV8 build).

OpenBLAS needs `libgfortran.so.5`, which the mlx wheel ships under a hashed file name: a small
folder of links under the user cache supplies the plain name. `MLX_PARTNER_FAST_BLAS=0` turns all
of this off. On macOS MLX uses Metal and Accelerate, and none of this applies.
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from .workspace import atomic_write_json, partner_home

MARKER = "MLX_PARTNER_FAST_BLAS"  # "0"/"off": disabled; set by us to "active" or "none" for the child
CHOICE = "MLX_PARTNER_BLAS"  # a library the user names
_NAME = "MLX_PARTNER_BLAS_NAME"  # what the re-executed process is running, for the header
_NOTE = "MLX_PARTNER_BLAS_NOTE"  # why no fast BLAS is in use
PROBE_TIMEOUT = float(os.environ.get("MLX_PARTNER_BLAS_PROBE_TIMEOUT", "60"))
# Test-only: makes the probe child fail on purpose ("sigill", "hang" or "wrong"), so the tests can
# show each failure leads to the reference path. Not for users.
TEST_FAULT = "MLX_PARTNER_TEST_PROBE_FAULT"
VERDICTS_VERSION = 1

# The probe child: load the library, run MLX matmuls of a few shapes, compare with numpy, report
# the library's own build string and kernel. Printed as one JSON line.
PROBE = r"""
import ctypes, json, os, signal, sys, time
fault = os.environ.get("MLX_PARTNER_TEST_PROBE_FAULT", "")
if fault == "sigill":
    os.kill(os.getpid(), signal.SIGILL)
if fault == "hang":
    time.sleep(3600)
path = sys.argv[1]
maps = open("/proc/self/maps").read()
if os.path.realpath(path) not in maps:
    print(json.dumps({"ok": False, "reason": "the library did not load (the dynamic loader refused it)"}))
    sys.exit(0)
lib = ctypes.CDLL(path)
config = corename = ""
for fn, out in (("openblas_get_config", "config"), ("openblas_get_corename", "corename")):
    if hasattr(lib, fn):
        getattr(lib, fn).restype = ctypes.c_char_p
        value = getattr(lib, fn)().decode(errors="replace").strip()
        config, corename = (value, corename) if out == "config" else (config, value)
import numpy as np
import mlx.core as mx
rng = np.random.default_rng(0)
worst = 0.0
for m, k, n in ((256, 256, 256), (67, 129, 33), (1, 512, 300)):
    a = rng.standard_normal((m, k)).astype(np.float32)
    b = rng.standard_normal((k, n)).astype(np.float32)
    got = np.array(mx.array(a) @ mx.array(b))
    if fault == "wrong":
        got = got + 1.0
    ref = a.astype(np.float64) @ b.astype(np.float64)
    worst = max(worst, float(np.max(np.abs(got - ref)) / (np.max(np.abs(ref)) + 1e-9)))
x = mx.random.normal((512, 512)); mx.eval(x @ x)
t = time.perf_counter(); mx.eval(x @ x); seconds = time.perf_counter() - t
ok = worst < 1e-4
print(json.dumps({"ok": ok, "reason": "" if ok else f"computed a wrong product (relative error {worst:.2g})",
                  "config": config, "corename": corename, "gflops": 2 * 512**3 / seconds / 1e9}))
"""


@dataclass(frozen=True)
class Candidate:
    path: str
    origin: str  # where it came from, for the header: "MLX_PARTNER_BLAS", "system", "cmeel-openblas"


@dataclass(frozen=True)
class Verdict:
    ok: bool
    reason: str = ""
    config: str = ""  # the library's build string, e.g. "OpenBLAS 0.3.29 NO_AFFINITY ZEN MAX_THREADS=64"
    corename: str = ""  # the kernel it runs, e.g. "Zen", "Haswell", "SkylakeX"
    gflops: float = 0.0  # one 512x512 float32 matmul in the probe: a sanity figure, not a benchmark


def applies() -> bool:
    """True where MLX runs on its Linux CPU wheel, the only place a BLAS swap helps."""
    return sys.platform.startswith("linux") and os.environ.get(MARKER, "") not in ("0", "off")


def is_active() -> bool:
    return os.environ.get(MARKER) == "active"


def _site_dir(package: str) -> Path | None:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations))).parent


def _system_openblas() -> list[str]:
    """OpenBLAS libraries the dynamic loader knows about (`ldconfig -p`), pthread builds first."""
    try:
        out = subprocess.run(["ldconfig", "-p"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        out = ""
    found = []
    for line in out.splitlines():
        name, _, path = line.strip().partition(" => ")
        if name.startswith("libopenblas") and ".so.0" in name and path and os.path.exists(path):
            found.append(path)
    return sorted(set(found), key=lambda p: ("pthread" not in os.path.realpath(p), p))


def candidates() -> list[Candidate]:
    """The libraries to try, in order (see the module docstring)."""
    named = os.environ.get(CHOICE, "").strip()
    if named:
        return [Candidate(named, CHOICE)]
    found = [Candidate(p, "system") for p in _system_openblas()]
    site = _site_dir("mlx")
    if site is not None:
        pip = site / "cmeel.prefix" / "lib" / "libopenblas.so.0"
        if pip.exists():
            found.append(Candidate(str(pip), "cmeel-openblas"))
    return found


def _cpu_id() -> str:
    """The CPU's model name and flags: a library that runs on one CPU may die on another."""
    model = flags = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
            key, _, value = line.partition(":")
            key = key.strip()
            if key in ("model name", "Model", "CPU part") and not model:
                model = value.strip()
            elif key in ("flags", "Features") and not flags:
                flags = " ".join(sorted(value.split()))
    return f"{model}|{flags}"


def _cache_key(path: str) -> str:
    st = os.stat(path)
    real = os.path.realpath(path)
    raw = f"{real}|{st.st_size}|{st.st_mtime_ns}|{_cpu_id()}"
    return hashlib.sha256(raw.encode()).hexdigest()[:32]


def _verdicts_path() -> Path:
    return partner_home() / "blas" / "verdicts.json"


def _read_verdicts() -> dict[str, dict]:
    try:
        data = json.loads(_verdicts_path().read_text())
        return data.get("verdicts", {}) if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _record_verdict(key: str, path: str, verdict: Verdict) -> None:
    verdicts = _read_verdicts()
    verdicts[key] = {"path": path, **asdict(verdict)}
    with contextlib.suppress(OSError):
        _verdicts_path().parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(_verdicts_path(), {"version": VERDICTS_VERSION, "verdicts": verdicts})


def _gfortran_links() -> Path | None:
    """A folder holding `libgfortran.so.5` -> the mlx wheel's hashed copy, or None."""
    site = _site_dir("mlx")
    if site is None:
        return None
    gfortran = sorted(glob.glob(str(site / "mlx_cpu.libs" / "libgfortran-*.so.5*")))
    if not gfortran:
        return None
    links = partner_home() / "blas"
    links.mkdir(parents=True, exist_ok=True)
    link = links / "libgfortran.so.5"
    if not link.exists() or os.path.realpath(link) != os.path.realpath(gfortran[0]):
        tmp = links / f".libgfortran.{os.getpid()}"
        if tmp.is_symlink():
            tmp.unlink()
        tmp.symlink_to(gfortran[0])
        os.replace(tmp, link)
    return links


def preload_env(path: str, threads: int | None = None) -> dict[str, str]:
    """Environment additions that make a new process run MLX on the library at `path`."""
    lib_dirs = []
    with contextlib.suppress(OSError):
        links = _gfortran_links()
        if links is not None:
            lib_dirs.append(str(links))
    site = _site_dir("mlx")
    if site is not None:
        lib_dirs.append(str(site / "mlx_cpu.libs"))
    base_preload = " ".join(p for p in os.environ.get("LD_PRELOAD", "").split() if p != path)
    env = {
        "LD_PRELOAD": " ".join(p for p in [path, base_preload] if p),
        "LD_LIBRARY_PATH": os.pathsep.join(
            p for p in [*lib_dirs, os.environ.get("LD_LIBRARY_PATH", "")] if p),
    }
    if threads is not None:
        env.setdefault("OPENBLAS_NUM_THREADS", str(threads))
        if "mkl" in os.path.basename(path):
            env["MKL_NUM_THREADS"] = str(threads)
            env["MKL_THREADING_LAYER"] = "SEQUENTIAL" if threads == 1 else "GNU"
    return env


def probe(candidate: Candidate, timeout: float | None = None) -> Verdict:
    """Load the library in a child process and check MLX's matmuls against numpy. Never raises."""
    if not os.path.isfile(candidate.path):
        return Verdict(False, f"{candidate.path} does not exist")
    env = {k: v for k, v in os.environ.items() if k != MARKER}
    env.update(preload_env(candidate.path, threads=1))
    env[MARKER] = "probe"
    timeout = PROBE_TIMEOUT if timeout is None else timeout
    try:
        out = subprocess.run([sys.executable, "-c", PROBE, candidate.path], env=env,
                             capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return Verdict(False, f"the probe hung for {timeout:.0f} s")
    except OSError as exc:
        return Verdict(False, f"the probe could not start ({exc})")
    if out.returncode < 0:
        try:
            name = signal.Signals(-out.returncode).name
        except ValueError:
            name = f"signal {-out.returncode}"
        hint = " (built for another CPU)" if name == "SIGILL" else ""
        return Verdict(False, f"the probe died with {name}{hint}")
    lines = out.stdout.strip().splitlines()
    try:
        result = json.loads(lines[-1])
    except (IndexError, ValueError):
        last = (out.stderr.strip().splitlines() or ["no output"])[-1]
        return Verdict(False, f"the probe failed (exit {out.returncode}: {last[:200]})")
    return Verdict(bool(result.get("ok")), str(result.get("reason", "")), str(result.get("config", "")),
                   str(result.get("corename", "")), float(result.get("gflops", 0.0)))


def verdict_for(candidate: Candidate) -> tuple[Verdict, bool]:
    """The cached verdict for this library on this CPU, probing once if there is none.

    Returns the verdict and whether it was probed just now.
    """
    try:
        key = _cache_key(candidate.path)
    except OSError:
        return Verdict(False, f"{candidate.path} does not exist"), True
    cached = _read_verdicts().get(key)
    if cached is not None:
        fields = {k: cached[k] for k in Verdict.__dataclass_fields__ if k in cached}
        return Verdict(**fields), False
    verdict = probe(candidate)
    _record_verdict(key, candidate.path, verdict)
    return verdict, True


@dataclass(frozen=True)
class Choice:
    candidate: Candidate | None  # None: no library passed, MLX stays on its reference BLAS
    verdict: Verdict | None
    passed_over: tuple[str, ...]  # "origin path: reason" for each library that failed its check
    probed_now: bool  # whether a failing library was probed in this call (not read from the cache)


def choose() -> Choice:
    """The first candidate whose verdict is good, probing each at most once per machine."""
    passed_over, probed_now = [], False
    for candidate in candidates():
        verdict, probed = verdict_for(candidate)
        if verdict.ok:
            return Choice(candidate, verdict, tuple(passed_over), probed_now)
        passed_over.append(f"{candidate.origin} {candidate.path}: {verdict.reason}")
        probed_now = probed_now or probed
    return Choice(None, None, tuple(passed_over), probed_now)


def _idle_cores(seconds: float = 0.1) -> float | None:
    """How many cores sat idle over a short sample of /proc/stat (None where it cannot be read)."""
    def sample() -> tuple[int, int]:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        return fields[3] + fields[4], sum(fields)  # idle + iowait, total

    try:
        idle0, total0 = sample()
        time.sleep(seconds)
        idle1, total1 = sample()
    except (OSError, ValueError, IndexError):
        return None
    if total1 <= total0:
        return None
    return (idle1 - idle0) / (total1 - total0) * (os.cpu_count() or 1)


def thread_count() -> int:
    """OpenBLAS threads: the cores this process may use that other work is not keeping busy.

    Under CPU contention OpenBLAS threads were measured 2.5-6x slower than one thread, so a busy
    machine gets fewer. Measured now (a 0.1 s sample), not from the load average, which still
    counts the user's previous command. `OPENBLAS_NUM_THREADS` wins when set.
    """
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    idle = _idle_cores()
    if idle is None:
        return cores
    return max(1, min(cores, int(idle + 0.5)))


def fast_blas_env(choice: Choice | None = None) -> dict[str, str] | None:
    """Environment additions for a child process that should run on the chosen fast BLAS, or None."""
    choice = choose() if choice is None else choice
    if choice.candidate is None or choice.verdict is None:
        return None
    env = preload_env(choice.candidate.path, threads=thread_count())
    env[MARKER] = "active"
    threads = os.environ.get("OPENBLAS_NUM_THREADS") or env.get("OPENBLAS_NUM_THREADS", "")
    env[_NAME] = describe(choice.candidate, choice.verdict, threads)
    return env


def describe(candidate: Candidate, verdict: Verdict, threads: str) -> str:
    name = verdict.config.split(" NO_")[0].split(" ")[:2] if verdict.config else []
    label = " ".join(name) or os.path.basename(candidate.path)
    kernel = f", kernel {verdict.corename}" if verdict.corename else ""
    return f"{label} ({candidate.origin}{kernel}, {threads or '?'} thread{'s' if threads != '1' else ''})"


def reexec_with_fast_blas() -> None:
    """Re-run this process under a probed fast BLAS once, before MLX is imported.

    Returns (and the command goes on at reference speed) when no library passes the probe; a
    fresh failure is said in one line on stderr. Called only from the console entry point.
    """
    if not applies() or os.environ.get(MARKER) in ("active", "none", "probe") or "mlx.core" in sys.modules:
        return
    try:
        choice = choose()
        env = fast_blas_env(choice)
    except OSError as exc:
        choice, env = Choice(None, None, (f"the check could not run ({exc})",), True), None
    if env is None:
        os.environ[MARKER] = "none"
        os.environ[_NOTE] = "; ".join(choice.passed_over) or "no OpenBLAS found"
        if choice.probed_now:  # said once: later runs read the cached verdict and only the header says it
            print(f"Note: {status_line()}", file=sys.stderr, flush=True)
        return
    os.environ.update(env)
    argv = getattr(sys, "orig_argv", None) or [sys.executable, *sys.argv]
    try:
        os.execv(sys.executable, [sys.executable, *argv[1:]])
    except OSError:
        os.environ[MARKER] = "none"


FIX = ("install a DYNAMIC_ARCH OpenBLAS (Debian/Ubuntu: sudo apt install libopenblas0-pthread) "
       "or name one with MLX_PARTNER_BLAS=/path/libopenblas.so.0")


def status_line() -> str | None:
    """One line for run headers: which BLAS MLX's CPU backend is using, and the fix if slow."""
    if not sys.platform.startswith("linux"):
        return None
    if is_active():
        return f"CPU BLAS: {os.environ.get(_NAME, 'OpenBLAS')}, fast path."
    if os.environ.get(MARKER) in ("0", "off"):
        return "CPU BLAS: reference (MLX_PARTNER_FAST_BLAS=0); matmuls are ~40x slower."
    note = os.environ.get(_NOTE)
    why = f" ({note})" if note else ""
    return f"CPU BLAS: reference, matmuls ~40x slower: no fast BLAS passed the check{why}; {FIX}."
