"""Where a study's runs execute: one after another, in parallel on this machine (one per GPU, or several
CPU runs), or as a SLURM job array through submitit. Every run is the same child command
(``run_study.py run_bundle ...``) writing its console output to its own log; a failed run is reported and
the others go on."""

from __future__ import annotations

import dataclasses
import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import BinaryIO

EPOCH_LINE = re.compile(r"Epoch: (\d+)/(\d+), Iter: (\d+)/(\d+)")
SUMMARY_INTERVAL_S = 60.0
LAUNCHERS = ("local", "slurm", "submitit_local")
STUDY_PID_ENV = "LESION_LOSS_STUDY_PID"  # set for the runs the study starts itself: they end with it
LOG_POLL_S = 0.2


class LaunchError(ValueError):
    """Launch options that cannot work: the message says which and why."""


class RunState(Enum):
    OK = "ok"
    EARLIER = "ok (an earlier command)"
    SKIPPED = "skipped (finished earlier)"
    FAILED = "failed"


@dataclass(frozen=True)
class RunStatus:
    """How a run ended; ``text`` is what study.json and the report show (``failed (exit 1): error: ...``)."""

    state: RunState
    how: str = ""  # a failure's exit status or job state, e.g. "exit 1"
    reason: str = ""  # a failure's last error line
    seconds: float | None = None

    @property
    def ok(self) -> bool:
        return self.state in (RunState.OK, RunState.EARLIER)

    @property
    def failed(self) -> bool:
        return self.state is RunState.FAILED

    @property
    def text(self) -> str:
        if not self.failed:
            return self.state.value
        return f"failed ({self.how})" + (f": {self.reason}" if self.reason else "")

    def record(self) -> dict:
        return {"status": self.text} | ({} if self.seconds is None else {"seconds": self.seconds})

    @classmethod
    def from_record(cls, record: dict) -> RunStatus:
        text, seconds = record.get("status", ""), record.get("seconds")
        for state in (RunState.EARLIER, RunState.SKIPPED, RunState.OK):
            if text == state.value:
                return cls(state, seconds=seconds)
        how, _, reason = text.removeprefix("failed (").partition(": ")
        return cls(RunState.FAILED, how.removesuffix(")"), reason, seconds)


@dataclass
class Job:
    """One (bundle, seed, fold) run of a study."""

    key: str  # <bundle>/seed<s>/fold<k>
    label: str
    command: list[str]
    log: Path
    env: dict[str, str] = field(default_factory=dict)


def format_seconds(seconds: float) -> str:
    return f"{seconds / 60:.1f} min" if seconds >= 90 else f"{seconds:.0f} s"


def outcome(code: int, error_line: str, seconds: float | None = None) -> RunStatus:
    if code == 0:
        return RunStatus(RunState.OK, seconds=seconds)
    return RunStatus(RunState.FAILED, f"exit {code}", error_line, seconds)


def last_error_line(log: Path) -> str:
    """The last ``error: ...`` line of a run's log (an input error, see custom_losses.errors), or ""."""
    if not log.is_file():
        return ""
    lines = [line.strip() for line in log.read_text(errors="replace").splitlines() if line.startswith("error: ")]
    return lines[-1] if lines else ""


def seconds_left(elapsed: float, done: float, resumed_at: float = 0.0) -> float:
    """Time left for a run that has done the fraction ``done``, ``elapsed`` seconds after this process
    started at the fraction ``resumed_at`` (0 for a fresh run, later for one resumed from a checkpoint)."""
    return elapsed * (1 - done) / max(done - resumed_at, 1e-6)


def end_with_study() -> None:
    """In a run the study started (``STUDY_PID_ENV`` set): end when the study ends, even by ``kill -9``.

    An orphaned trainer would go on writing into the run folder while a rerun of the study starts a second
    one there. Linux: the kernel sends SIGKILL at the study's death (``PR_SET_PDEATHSIG``); elsewhere, or
    if that fails, a thread checks the parent once a second."""
    study_pid = os.environ.get(STUDY_PID_ENV)
    if not study_pid:
        return
    signalled = False
    if sys.platform.startswith("linux"):
        import ctypes

        pr_set_pdeathsig = 1  # <linux/prctl.h>
        signalled = ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL) == 0
    if not signalled:

        def watch() -> None:
            while os.getppid() == int(study_pid):
                time.sleep(1.0)
            os._exit(1)

        threading.Thread(target=watch, name="end-with-study", daemon=True).start()
    if os.getppid() != int(study_pid):  # the study ended before this was set up
        os._exit(1)


def follow(log: BinaryIO, child: subprocess.Popen) -> Iterator[str]:
    """The lines ``child`` appends to ``log`` (opened at its end), as they come, until it has exited."""
    pending = b""
    while True:
        exited = child.poll() is not None
        chunk = log.read()
        *lines, pending = (pending + chunk).split(b"\n")
        yield from (line.decode(errors="replace") + "\n" for line in lines)
        if exited:
            if pending:
                yield pending.decode(errors="replace")
            return
        if not chunk:
            time.sleep(LOG_POLL_S)


def run_child(
    job: Job,
    started: float,
    runs_left: int,
    on_epoch: Callable[[str, int, int, float], None] | None = None,
) -> tuple[int, str]:
    """Run one child process writing its output, unbuffered, straight into ``job.log`` (appended, so
    nothing is lost if the study dies), follow that log, and report its epochs: printed with the time left
    (one run at a time), or passed to ``on_epoch(key, epoch, epochs, fraction_done)`` (parallel runs).
    The child ends with the study (:func:`end_with_study`).

    Returns the exit status and the child's last ``error: ...`` line, or "" when it printed none."""
    last_error = ""
    job.log.parent.mkdir(parents=True, exist_ok=True)
    run_start = time.time()
    last_report = 0.0
    resumed_at = None  # fraction done when this process started (a resumed run starts mid-way)
    env = {**os.environ, **job.env, "PYTHONUNBUFFERED": "1", STUDY_PID_ENV: str(os.getpid())}
    with open(job.log, "ab") as sink, open(job.log, "rb") as log:
        log.seek(0, os.SEEK_END)
        with subprocess.Popen(job.command, stdout=sink, stderr=subprocess.STDOUT, env=env) as child:
            for line in follow(log, child):
                match = EPOCH_LINE.search(line)
                if match:
                    epoch, epochs, iteration, iterations = (int(g) for g in match.groups())
                    done = (epoch - 1 + iteration / iterations) / epochs
                    if resumed_at is None:
                        resumed_at = (epoch - 1) / epochs
                    if on_epoch is not None:
                        on_epoch(job.key, epoch, epochs, done)
                    elif time.time() - last_report > 5:
                        elapsed = time.time() - run_start
                        left = seconds_left(elapsed, done, resumed_at)
                        print(
                            f"  {job.label}: epoch {epoch}/{epochs}, {format_seconds(elapsed)} elapsed, "
                            f"~{format_seconds(left)} left for this run, {runs_left} run(s) after it, "
                            f"study running for {format_seconds(time.time() - started)}",
                            flush=True,
                        )
                        last_report = time.time()
                elif line.startswith("error: "):
                    last_error = line.strip()
                elif line.startswith("stage: ") and on_epoch is None:
                    print(f"  {job.label}: {line[7:].strip()}", flush=True)
    return child.returncode, last_error


def run_sequential(jobs: Sequence[Job], started: float) -> dict[str, RunStatus]:
    status = {}
    for index, job in enumerate(jobs):
        print(f"{job.label}: running (log: {job.log})", flush=True)
        run_start = time.time()
        code, error_line = run_child(job, started, len(jobs) - index - 1)
        status[job.key] = outcome(code, error_line, round(time.time() - run_start, 1))
        print(f"{job.label}: {status[job.key].text} in {format_seconds(status[job.key].seconds)}", flush=True)
    return status


def threads_per_run(max_parallel: int) -> int:
    return max(1, (os.cpu_count() or 1) // max_parallel)


def run_parallel(
    jobs: Sequence[Job], started: float, max_parallel: int, gpus: Sequence[int] | None = None
) -> dict[str, RunStatus]:
    """Up to ``max_parallel`` runs at a time (one per GPU of ``gpus``, each seeing only its own through
    ``CUDA_VISIBLE_DEVICES``; CPU runs share the cores through ``OMP_NUM_THREADS`` unless it is set).
    Prints one line per finished run and a summary line per minute."""
    free_gpus: queue.SimpleQueue[int] = queue.SimpleQueue()
    for gpu in gpus or ():
        free_gpus.put(gpu)
    progress: dict[str, str] = {}
    lock = threading.Lock()
    status: dict[str, RunStatus] = {}

    def on_epoch(key: str, epoch: int, epochs: int, done: float) -> None:
        with lock:
            progress[key] = f"epoch {epoch}/{epochs}"

    def execute(job: Job) -> tuple[int, str, float]:
        gpu = free_gpus.get() if gpus else None
        if gpu is not None:
            job.env["CUDA_VISIBLE_DEVICES"] = str(gpu)
        elif "OMP_NUM_THREADS" not in os.environ:
            job.env["OMP_NUM_THREADS"] = str(threads_per_run(max_parallel))
        with lock:
            progress[job.key] = "starting" + (f" on GPU {gpu}" if gpu is not None else "")
        run_start = time.time()
        try:
            code, error_line = run_child(job, started, 0, on_epoch=on_epoch)
        finally:
            if gpu is not None:
                free_gpus.put(gpu)
            with lock:
                progress.pop(job.key, None)
        return code, error_line, round(time.time() - run_start, 1)

    where = f"GPUs {list(gpus)}" if gpus else f"{threads_per_run(max_parallel)} CPU thread(s) each"
    print(f"{len(jobs)} run(s), up to {max_parallel} at a time ({where}); logs in each run's folder", flush=True)
    with ThreadPoolExecutor(max_workers=max_parallel) as pool:
        by_future = {pool.submit(execute, job): job for job in jobs}
        pending = set(by_future)
        while pending:
            finished, pending = wait(pending, timeout=SUMMARY_INTERVAL_S, return_when=FIRST_COMPLETED)
            for future in finished:
                job = by_future[future]
                try:
                    code, error_line, seconds = future.result()
                except OSError as error:  # the child could not start
                    code, error_line, seconds = 1, f"error: {error}", 0.0
                status[job.key] = outcome(code, error_line, seconds)
                print(f"{job.label}: {status[job.key].text} in {format_seconds(seconds)}", flush=True)
            if pending and not finished:
                with lock:
                    running = ", ".join(f"{key} {state}" for key, state in sorted(progress.items()))
                queued = len(pending) - len(progress)
                print(
                    f"  study running for {format_seconds(time.time() - started)}: {len(status)} done, "
                    f"{queued} queued, running: {running or 'none'}",
                    flush=True,
                )
    return status


@dataclass
class SlurmOptions:
    """Resources of each job of the array (submitit's names)."""

    partition: str | None = None
    time_min: int = 120
    gpus_per_job: int = 1
    cpus_per_job: int = 8
    mem_gb: int | None = None
    array_parallelism: int = 64


def submit_array(
    jobs: Sequence[Job], folder: Path, cluster: str, options: SlurmOptions, wait_for_jobs: bool, started: float
) -> dict[str, RunStatus] | None:
    """Submit every run as one job of a submitit job array (``cluster``: ``slurm``, or ``local`` for
    submitit's local executor, the same code path without SLURM). With ``wait_for_jobs`` it waits and
    returns each run's status; otherwise it writes ``FOLDER/jobs.json`` and returns None."""
    try:
        import submitit
        from submitit.helpers import CommandFunction
    except ModuleNotFoundError as error:
        raise LaunchError("--launcher=slurm needs submitit: pip install submitit") from error
    executor = submitit.AutoExecutor(folder=folder, cluster=cluster)  # submitit logs: FOLDER/<job id>_*
    parameters = {
        "name": folder.parent.name,
        "timeout_min": options.time_min,
        "cpus_per_task": options.cpus_per_job,
        "gpus_per_node": options.gpus_per_job if cluster == "slurm" else 0,
        "slurm_array_parallelism": options.array_parallelism,
    }
    if options.partition:
        parameters["slurm_partition"] = options.partition
    if options.mem_gb:
        parameters["mem_gb"] = options.mem_gb
    executor.update_parameters(**parameters)
    submitted = []
    with executor.batch():  # one job array
        for job in jobs:
            job.log.parent.mkdir(parents=True, exist_ok=True)
            # the run's console output goes to its own log, as with the other launchers
            command = ["bash", "-c", 'log="$1"; shift; exec "$@" >> "$log" 2>&1', "run", str(job.log), *job.command]
            submitted.append(executor.submit(CommandFunction(command, verbose=False, env={**os.environ, **job.env})))
    ids = {job.key: array_job.job_id for job, array_job in zip(jobs, submitted, strict=True)}
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "jobs.json").write_text(json.dumps(ids, indent=4) + "\n")
    first_last = _id_range(list(ids.values()))
    print(f"submitted {len(jobs)} run(s) as {cluster} job(s) {first_last}; ids in {folder / 'jobs.json'}", flush=True)
    if not wait_for_jobs:
        return None
    status: dict[str, RunStatus] = {}
    pending = {job.key: (job, array_job) for job, array_job in zip(jobs, submitted, strict=True)}
    last_summary = time.time()
    while pending:
        for key, (job, array_job) in list(pending.items()):
            if not array_job.done():
                continue
            del pending[key]
            try:
                array_job.result()
                status[job.key] = RunStatus(RunState.OK)
            except Exception:  # submitit raises the job's failure (FailedJobError, UncompletedJobError...)
                how = f"job {array_job.job_id}, {array_job.state}"
                status[job.key] = RunStatus(RunState.FAILED, how, last_error_line(job.log))
            print(f"{job.label}: {status[job.key].text}", flush=True)
        if pending:
            if time.time() - last_summary >= SUMMARY_INTERVAL_S:
                print(
                    f"  study running for {format_seconds(time.time() - started)}: {len(status)} done, "
                    f"{len(pending)} waiting on the cluster",
                    flush=True,
                )
                last_summary = time.time()
            time.sleep(2)
    return status


def _id_range(ids: list[str]) -> str:
    return ids[0] if len(ids) == 1 else f"{ids[0]} ... {ids[-1]}"


def check_launch(launcher: str, max_parallel: int, gpus: Sequence[int] | None, device: str | None) -> None:
    if launcher not in LAUNCHERS:
        raise LaunchError(f"--launcher must be one of {', '.join(LAUNCHERS)}, got {launcher!r}")
    if not isinstance(max_parallel, int) or isinstance(max_parallel, bool) or max_parallel < 1:
        raise LaunchError(f"--max_parallel must be a positive integer, got {max_parallel!r}")
    if gpus is not None:
        if launcher != "local":
            raise LaunchError("--gpus is for the local launcher; on SLURM use --slurm_gpus_per_job")
        if device is not None and device not in ("cuda", "cuda:0"):
            raise LaunchError(f"--gpus gives each run one GPU, seen as cuda:0; --device={device} contradicts it")
    if sys.platform == "win32" and launcher != "local":
        raise LaunchError("the SLURM launcher needs a POSIX system")


def check_cuda(device: str | None, gpus: Sequence[int] | None) -> None:
    """Runs on this machine asked for CUDA (``--device=cuda...`` or ``--gpus``): it must be there, checked
    before any run starts (each run would otherwise fail on its own)."""
    if gpus is None and not (device or "").startswith("cuda"):
        return
    import torch

    asked = f"--device={device}" if device else f"--gpus={list(gpus)}"
    if not torch.cuda.is_available():
        build = "" if torch.version.cuda else ", a build without CUDA"
        raise LaunchError(f"{asked}: CUDA is not available on this machine (torch {torch.__version__}{build})")
    index = torch.device(device).index if device else None
    if index is not None and index >= torch.cuda.device_count():
        raise LaunchError(f"{asked}: this machine has {torch.cuda.device_count()} CUDA device(s)")


def launch_jobs(
    jobs: Sequence[Job],
    launcher: str,
    parallel: int,
    gpus: Sequence[int] | None,
    slurm: SlurmOptions,
    slurm_dir: Path,
    wait_for_jobs: bool,
    started: float,
) -> dict[str, RunStatus] | None:
    """Run the jobs here (one after another, or ``parallel`` at a time, one per GPU with ``gpus``) or as a
    job array (``slurm``, ``submitit_local``); ``None`` when submitted without waiting."""
    if launcher != "local":
        if not jobs:
            return {}
        at_once = parallel if parallel > 1 else SlurmOptions.array_parallelism
        options = dataclasses.replace(slurm, array_parallelism=at_once)
        return submit_array(
            jobs, slurm_dir, "slurm" if launcher == "slurm" else "local", options, wait_for_jobs, started
        )
    if parallel > 1 and len(jobs) > 1:
        return run_parallel(jobs, started, parallel, gpus)
    return run_sequential(jobs, started)
