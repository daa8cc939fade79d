"""Job lists run in-process or as Ray tasks: `--backend local|ray` of study, sweep, invariance, bench.

A command turns its work into a list of `Job`s: a function ("module:function") with JSON
arguments, the files it reads, and the key that decides its result. `run_jobs` runs the jobs
that have no cached record and returns every job's record in list order:

- local (the default): in this process, a thread per parallel job; no Ray needed.
- ray: as Ray tasks on the cluster named by RAY_ADDRESS, or on a Ray instance started for the run
  (loopback only) and stopped after it. Input files are put once into the object store; a worker
  fetches them, checks their sha256 and keeps them in a node-local cache. The worker runs the
  same function with the same arguments as the local backend, so records are bitwise equal. It
  first checks that its code is the driver's (the code hash in the key): every node must have
  the same lenet-edge installed (`pip install -e .` of the same commit, or the same wheel).

Records come back to the driver, which alone writes them, atomically, one file per job named by
the hash of its key (model, seed, epochs, limits, recipe, input file hashes, code hash). A run
that was interrupted (driver killed) runs only the jobs without a record when started again.
Ray retries a task whose worker process or node died; a job's record is written once whatever
the number of attempts.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import json
import math
import os
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lenet_edge.runtime.cli import MAX_JOBS, int_range
from lenet_edge.runtime.errors import ConfigError, LenetEdgeError
from lenet_edge.runtime.files import (
    code_sha256,
    fault_point,
    owned_temp_dir,
    read_json,
    remove_stale_temp_files,
    sha256_file,
    write_bytes_atomic,
    write_json_atomic,
)

SCHEMA = "lenet-edge/job/v1"
BACKENDS = ("local", "ray")
# Retries of a task whose worker process or node died (Ray's own fault tolerance).
RAY_TASK_RETRIES = 4
# Where a worker keeps the input files it fetched from the object store (per node, by sha256).
INPUT_CACHE_ENV = "LENET_EDGE_INPUT_CACHE"
# The address this process uses inside the cluster (127.0.0.1 for a loopback cluster).
NODE_IP_ENV = "LENET_EDGE_RAY_NODE_IP"
# A name for a node in the job records (set in the environment of its `ray start`; optional).
NODE_NAME_ENV = "LENET_EDGE_NODE_NAME"


class JobError(LenetEdgeError):
    """A job failed; the message names the job and the cause."""


@dataclass(frozen=True)
class Job:
    """One unit of work. `fn(payload, inputs, work_dir) -> record` (a JSON-able dict)."""

    kind: str
    key: dict[str, Any]
    fn: str
    payload: dict[str, Any] = field(default_factory=dict)
    inputs: dict[str, str] = field(default_factory=dict)  # name -> path on the driver
    resources: dict[str, float] = field(default_factory=dict)  # Ray resources beyond one CPU
    code_modules: tuple[str, ...] = ()  # code it runs beyond fn's module (stages it starts as processes)
    label: str = ""


def code_hash(fn: str, modules: tuple[str, ...] | list[str] = ()) -> str:
    """The hash of the project code a job runs: the import closure of fn's module and `modules`."""
    module = fn.partition(":")[0].removeprefix("lenet_edge.")
    return code_sha256(module, *(m.removeprefix("lenet_edge.") for m in modules))


def full_key(job: Job, input_sha: dict[str, str], code: str) -> dict[str, Any]:
    """Everything that decides a job's record: its own key, its input files and its code."""
    return {"kind": job.kind, **job.key, "inputs": dict(sorted(input_sha.items())), "code_sha256": code}


def key_id(key: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:24]


@dataclass
class Prepared:
    job: Job
    key: dict[str, Any]
    id: str
    input_sha: dict[str, str]


def check_jobs(jobs: list[Job], backend: str) -> None:
    """What `run_jobs` would refuse, found before a command prints its plan or starts a progress
    bar (one line, nothing created): an unknown backend, Ray not installed, an input file that is
    not there, the same job twice."""
    if backend not in BACKENDS:
        raise ConfigError(f"--backend {backend}: choose one of {', '.join(BACKENDS)}")
    if backend == "ray" and importlib.util.find_spec("ray") is None:
        ray_module()  # its message says how to install it
    seen: dict[str, str] = {}
    for j in jobs:
        for path in j.inputs.values():
            if not Path(path).is_file():
                raise ConfigError(f"{path}: input file of job {j.label or j.kind} not found")
        same = json.dumps([j.kind, j.fn, j.key, j.inputs], sort_keys=True)
        if same in seen:
            raise ConfigError(f"job {j.label or j.kind} is given twice ({seen[same]!r} and this one)")
        seen[same] = j.label or j.kind


def prepare(jobs: list[Job]) -> list[Prepared]:
    """Hash each input file once and each job's code once; the cache id of every job."""
    file_sha: dict[str, str] = {}
    code: dict[tuple[str, tuple[str, ...]], str] = {}
    out = []
    for j in jobs:
        sha = {}
        for name, path in j.inputs.items():
            if path not in file_sha:
                file_sha[path] = sha256_file(path)
            sha[name] = file_sha[path]
        what = (j.fn, j.code_modules)
        if what not in code:
            code[what] = code_hash(j.fn, j.code_modules)
        key = full_key(j, sha, code[what])
        out.append(Prepared(j, key, key_id(key), sha))
    ids = [p.id for p in out]
    if len(set(ids)) != len(ids):
        raise ConfigError("two jobs have the same key: the job list has a duplicate")
    return out


def record_path(cache_dir: Path, p: Prepared) -> Path:
    return cache_dir / f"{p.id}.json"


def cached(cache_dir: Path, p: Prepared) -> dict[str, Any] | None:
    """The job's record if a previous run left one made with this very key."""
    f = record_path(cache_dir, p)
    if not f.is_file():
        return None
    try:
        d = read_json(f)
    except LenetEdgeError:
        return None
    ok = isinstance(d, dict) and d.get("schema") == SCHEMA and d.get("key") == p.key
    return d["record"] if ok else None


# --- data sets as job inputs ------------------------------------------------------------------------


def data_inputs(data_dir: Path | None) -> dict[str, str]:
    """The files of a data set, as job inputs: MNIST's four IDX files (the default folder or the
    one given), or one data file (.npz)."""
    from lenet_edge.runtime.mnist import MNIST_FILES, default_data_dir

    if data_dir is not None and Path(data_dir).is_file():
        return {"data": str(data_dir)}
    root = Path(data_dir) if data_dir else default_data_dir()
    return {name: str(root / name) for name in MNIST_FILES}


def data_arg(inputs: dict[str, Path]) -> Path:
    """What a stage takes as --data-dir for the inputs of `data_inputs` (on either backend)."""
    from lenet_edge.runtime.mnist import MNIST_FILES

    if "data" in inputs:
        return inputs["data"]
    parents = {inputs[name].parent for name in MNIST_FILES}
    if len(parents) != 1:
        raise JobError(f"the data set's files are in {len(parents)} folders, not one")
    return parents.pop()


# --- what runs on a worker ----------------------------------------------------------------------


def call(fn: str, payload: dict[str, Any], inputs: dict[str, Path], work: Path) -> dict[str, Any]:
    module, _, name = fn.partition(":")
    f: Callable[..., dict[str, Any]] = getattr(importlib.import_module(module), name)
    rec = f(payload, inputs, work)
    if not isinstance(rec, dict):
        raise JobError(f"{fn} returned {type(rec).__name__}, not a record")
    # records cross process and machine boundaries as JSON: the same bytes on either backend
    return json.loads(json.dumps(rec))


def _input_cache() -> Path:
    return Path(os.environ.get(INPUT_CACHE_ENV) or Path(tempfile.gettempdir()) / "lenet-edge-inputs")


def materialize(name: str, sha: str, blob: bytes, filename: str) -> Path:
    """Write an input fetched from the object store into the node's cache, after checking it."""
    if not filename or filename in (".", "..") or "/" in filename or "\0" in filename:
        raise JobError(f"input {name}: {filename!r} is not a plain file name")
    got = hashlib.sha256(blob).hexdigest()
    if got != sha:
        raise JobError(
            f"input {name} ({filename}): sha256 {got[:12]} on the worker, {sha[:12]} on the driver"
        )
    d = _input_cache() / sha[:24]
    out = d / filename
    if out.is_file() and sha256_file(out) == sha:  # a cached copy is used only if still intact
        return out
    write_bytes_atomic(out, blob)  # a killed worker's temp file is removed by the next writer
    return out


def _link(src: Path, dst: Path) -> None:
    """A hard link (a symlink would resolve outside the job's folder, which stages refuse),
    put in place atomically: another worker of the node may be linking the same file."""
    remove_stale_temp_files(dst)  # a killed worker's
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        try:
            os.link(src, tmp)
        except OSError:
            shutil.copyfile(src, tmp)
        os.replace(tmp, dst)
    finally:
        tmp.unlink(missing_ok=True)


def ray_job(job: dict[str, Any], refs: dict[str, tuple[str, str, list[Any]]]) -> dict[str, Any]:
    """The body of the Ray task (a plain function, so a test can call it without Ray)."""
    mine = code_hash(job["fn"], job["code_modules"])
    if mine != job["code_sha256"]:
        raise JobError(
            f"{job['label']}: this node's lenet-edge code ({mine[:12]}) is not the driver's "
            f"({job['code_sha256'][:12]}): install the same commit on every node"
        )
    import ray

    # The job's inputs side by side under their own names, as on the driver (a model and the
    # record beside it, the four IDX files of a data set), in a folder named by their hashes:
    # the same inputs have the same paths on a node, job after job.
    files = sorted((filename, sha) for sha, filename, _ in refs.values())
    folder = _input_cache() / "sets" / hashlib.sha256(json.dumps(files).encode()).hexdigest()[:24]
    folder.mkdir(parents=True, exist_ok=True)
    inputs = {}
    for name, (sha, filename, ref) in refs.items():
        inputs[name] = folder / filename
        if not (inputs[name].is_file() and sha256_file(inputs[name]) == sha):
            _link(materialize(name, sha, ray.get(ref[0]), filename), inputs[name])
    with owned_temp_dir("job") as work:  # pid-named: a killed run's folder is removed later
        rec = call(job["fn"], job["payload"], inputs, Path(work))
    node = {"node_id": ray.get_runtime_context().get_node_id(), "pid": os.getpid()}
    if name := os.environ.get(NODE_NAME_ENV):
        node["node_name"] = name
    return {"record": rec, "node": node}


# --- the driver ---------------------------------------------------------------------------------


@dataclass
class RunStats:
    total: int = 0
    cached: int = 0
    ran: int = 0
    seconds: float = 0.0
    backend: str = "local"
    nodes: dict[str, int] = field(default_factory=dict)  # node id -> jobs it ran (ray)


def run_jobs(
    jobs: list[Job],
    cache_dir: Path,
    backend: str = "local",
    parallel: int = 1,
    on_record: Callable[[Job, dict[str, Any]], None] | None = None,
    progress: Any = None,
) -> tuple[list[dict[str, Any]], RunStats]:
    """Every job's record, in list order; jobs with a cached record are not run again."""
    check_jobs(jobs, backend)
    prepared = prepare(jobs)
    stats = RunStats(total=len(jobs), backend=backend)
    records: dict[str, dict[str, Any]] = {}
    todo = []
    for p in prepared:
        if (rec := cached(cache_dir, p)) is not None:
            records[p.id] = rec
        else:
            todo.append(p)
    stats.cached = len(records)
    if progress is not None and stats.cached:
        progress.update(stats.cached)
    lock = threading.Lock()

    def done(p: Prepared, rec: dict[str, Any], ran_on: dict[str, Any]) -> None:
        with lock:  # the driver alone writes records
            write_json_atomic(
                record_path(cache_dir, p),
                {"schema": SCHEMA, "key": p.key, "record": rec, "ran_on": ran_on},
            )
            fault_point("jobs.record")  # tests: the driver killed right after a record
            records[p.id] = rec
            stats.ran += 1
            if on_record is not None:
                on_record(p.job, rec)
            if progress is not None:
                progress.update(1)

    t0 = time.perf_counter()
    if todo:
        if backend == "local":
            _run_local(todo, parallel, done)
        else:
            _run_ray(todo, parallel, done, stats)
    stats.seconds = time.perf_counter() - t0
    return [records[p.id] for p in prepared], stats


def _run_local(todo: list[Prepared], parallel: int, done: Callable[..., None]) -> None:
    def one(p: Prepared) -> dict[str, Any]:
        inputs = {n: Path(path) for n, path in p.job.inputs.items()}
        with owned_temp_dir("job") as work:  # pid-named: a killed run's folder is removed later
            return call(p.job.fn, p.job.payload, inputs, Path(work))

    failures: list[str] = []
    with ThreadPoolExecutor(max_workers=max(1, parallel)) as pool:
        pending = {pool.submit(one, p): p for p in todo}
        try:
            while pending:
                finished, _ = wait(pending, timeout=5, return_when=FIRST_COMPLETED)
                for f in finished:
                    p = pending.pop(f)
                    try:
                        rec = f.result()
                    except LenetEdgeError as e:
                        failures.append(f"{p.job.label or p.id}: {e}")
                        continue
                    except Exception as e:  # a job's bug: as on Ray, the others still finish
                        failures.append(f"{p.job.label or p.id}: {type(e).__name__}: {e}")
                        continue
                    done(p, rec, {"backend": "local", "pid": os.getpid()})
        except BaseException:
            for f in pending:
                f.cancel()
            raise
    _raise_failures(failures, len(todo))


def _raise_failures(failures: list[str], n: int) -> None:
    if failures:
        more = f" (and {len(failures) - 1} more)" if len(failures) > 1 else ""
        raise JobError(f"{len(failures)} of {n} jobs failed; the others are cached: {failures[0]}{more}")


def ray_module() -> Any:
    try:
        import ray
    except ImportError as e:
        raise ConfigError(
            "--backend ray needs Ray: run `make setup-cluster` (requirements/cluster.in)"
        ) from e
    return ray


def connect(parallel: int) -> Callable[[], None]:
    """Join the cluster named by RAY_ADDRESS, or start a loopback instance for this run."""
    address = os.environ.get("RAY_ADDRESS")
    if not address:
        # A private instance: nothing listens beyond loopback, nothing outlives the run. Ray reads
        # this when it is imported: with it, its address lookup answers 127.0.0.1 instead of the
        # machine's network address.
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
        os.environ.setdefault("RAY_AUTH_MODE", "token")  # Ray 2.60's default, said explicitly: no warning
    ray = ray_module()
    node_ip = os.environ.get(NODE_IP_ENV)
    kw: dict[str, Any] = {"log_to_driver": False, "configure_logging": False}
    if node_ip:
        kw["_node_ip_address"] = node_ip
    if address:
        try:
            ray.init(address=address, **kw)
        except Exception as e:  # ConnectionError, auth errors: one line, not Ray's traceback
            raise ConfigError(f"RAY_ADDRESS={address}: cannot join the Ray cluster: {str(e)[:200]}") from e
        return ray.shutdown
    kw.setdefault("_node_ip_address", "127.0.0.1")
    ray.init(num_cpus=max(1, parallel), include_dashboard=False, **kw)
    ip = ray.util.get_node_ip_address()
    if ip != "127.0.0.1":  # Ray was imported before the setting above could take effect
        ray.shutdown()
        raise ConfigError(
            f"the Ray instance for this run took address {ip}, not 127.0.0.1; refusing to run on it"
        )
    return ray.shutdown


def _run_ray(todo: list[Prepared], parallel: int, done: Callable[..., None], stats: RunStats) -> None:
    stop = connect(parallel)
    ray = ray_module()
    try:
        task = ray.remote(max_retries=RAY_TASK_RETRIES, retry_exceptions=False)(ray_job)
        blobs: dict[str, Any] = {}  # sha -> ObjectRef: each file goes into the object store once
        pending: dict[Any, Prepared] = {}
        for p in todo:
            refs = {}
            for name, path in p.job.inputs.items():
                sha = p.input_sha[name]
                if sha not in blobs:
                    blobs[sha] = ray.put(Path(path).read_bytes())
                refs[name] = (sha, Path(path).name, [blobs[sha]])  # nested: fetched by the worker
            spec = {
                "fn": p.job.fn,
                "payload": p.job.payload,
                "label": p.job.label or p.id,
                "code_sha256": p.key["code_sha256"],
                "code_modules": list(p.job.code_modules),
            }
            opts: dict[str, Any] = {"name": "lenet_edge_job", "num_cpus": 1}
            if p.job.resources:
                opts["resources"] = dict(p.job.resources)
            pending[task.options(**opts).remote(spec, refs)] = p
        failures: list[str] = []
        try:
            while pending:
                ready, _ = ray.wait(list(pending), num_returns=1, timeout=5.0)
                for ref in ready:
                    p = pending.pop(ref)
                    try:
                        out = ray.get(ref)
                    except ray.exceptions.RayTaskError as e:
                        cause = e.cause if isinstance(e.cause, Exception) else e
                        failures.append(f"{p.job.label or p.id}: {str(cause).splitlines()[0][:300]}")
                        continue
                    except ray.exceptions.RayError as e:  # retries exhausted: worker or node lost
                        failures.append(
                            f"{p.job.label or p.id}: {type(e).__name__}: {str(e).splitlines()[0][:200]}"
                        )
                        continue
                    node = out["node"]["node_id"]
                    stats.nodes[node] = stats.nodes.get(node, 0) + 1
                    done(p, out["record"], {"backend": "ray", **out["node"]})
        except BaseException:
            for ref in pending:
                ray.cancel(ref, force=True)
            raise
        _raise_failures(failures, len(todo))
    finally:
        stop()


# --- command-line plumbing shared by the commands -----------------------------------------------


def add_backend_flags(p: Any, default_parallel: int | None = 1, backend_help: str | None = None) -> None:
    """--backend (and --jobs, unless default_parallel is None): one spelling for every command."""
    p.add_argument(
        "--backend",
        choices=BACKENDS,
        default="local",
        help=backend_help
        or "local: in this process (default); ray: Ray tasks on RAY_ADDRESS's cluster, "
        "or on a loopback Ray instance started for the run (make setup-cluster)",
    )
    if default_parallel is not None:
        p.add_argument(
            "--jobs",
            type=int_range(1, MAX_JOBS),
            default=default_parallel,
            help="jobs at once with the local backend, CPUs of a Ray instance started for the run "
            f"(default {default_parallel})",
        )


def describe(stats: RunStats) -> str:
    where = f" on {len(stats.nodes)} Ray node(s)" if stats.backend == "ray" and stats.nodes else ""
    return f"{stats.ran} ran{where}, {stats.cached} cached, {stats.seconds:.1f} s, {stats.backend} backend"


# --- a job that does nothing but read its input: the per-job overhead benchmark ----------------


def noop_job(payload: dict[str, Any], inputs: dict[str, Path], work: Path) -> dict[str, Any]:
    time.sleep(float(payload.get("sleep", 0.0)))
    return {"i": payload["i"], "bytes": sum(p.stat().st_size for p in inputs.values())}


def overhead_bench(n: int, sleep: float, parallel: int, out: Path) -> dict[str, Any]:
    """Wall time of the same n jobs on both backends: per-job overhead of Ray beyond local."""
    from lenet_edge.runtime.env import environment

    # `environment`, as in every other results file: `publish` names and checks the run from it
    res: dict[str, Any] = {"jobs": n, "sleep_s": sleep, "parallel": parallel, "environment": environment()}
    with owned_temp_dir("overhead") as tmp:
        blob = Path(tmp) / "input.bin"
        blob.write_bytes(os.urandom(1 << 20))
        for backend in BACKENDS:
            jobs = [
                Job(
                    "noop",
                    {"i": i, "backend": backend},
                    "lenet_edge.jobs:noop_job",
                    {"i": i, "sleep": sleep},
                    {"blob": str(blob)},
                    label=f"noop {i}",
                )
                for i in range(n)
            ]
            if backend == "ray":  # the start and stop of the instance alone, measured apart
                t0 = time.perf_counter()
                connect(parallel)()
                res["ray_start_stop_s"] = round(time.perf_counter() - t0, 3)
            t0 = time.perf_counter()
            run_jobs(jobs, Path(tmp) / backend, backend, parallel)
            res[f"{backend}_wall_s"] = round(time.perf_counter() - t0, 3)
    per_job = (res["ray_wall_s"] - res["local_wall_s"]) / n
    res["ray_overhead_per_job_s"] = round(per_job, 4)
    res["ray_overhead_per_job_excluding_start_s"] = round(per_job - res["ray_start_stop_s"] / n, 4)
    write_json_atomic(out, res)
    return res


def project(job_seconds: list[float], slots: int, per_job: float, start: float) -> float:
    """Wall time of these jobs on `slots` parallel slots, longest first to the freest slot (how
    Ray's queue behaves when every job is submitted at once), plus the measured overheads."""
    free = [0.0] * slots
    for t in sorted(job_seconds, reverse=True):
        i = free.index(min(free))
        free[i] += t + per_job
    return start + max(free)


def _seconds(path: Path | str, where: str, value: Any, positive: bool = True) -> float:
    """A time read from a results file: a finite number (> 0 unless `positive` is False), else one
    error naming the file and the field (NaN printed "nan min", a negative job time "0 min")."""
    ok = isinstance(value, int | float) and not isinstance(value, bool)
    try:
        ok = ok and math.isfinite(value) and (value > 0 or not positive)
    except OverflowError:  # an integer with hundreds of digits
        ok = False
    if not ok:
        need = "a finite number > 0" if positive else "a finite number"
        raise LenetEdgeError(f"{path}: {where} must be {need}, got {value!r:.60}")
    return float(value)


def study_job_seconds(study: Any, path: Path | str) -> dict[str, list[float]]:
    """Per model, the measured seconds of each of a study's jobs (rows[i].seconds.total), checked."""
    if not isinstance(study, dict):
        raise LenetEdgeError(f"{path}: not a study result (a JSON object with 'rows' is expected)")
    if "rows" not in study:
        raise LenetEdgeError(f"{path}: missing 'rows' (not a study result)")
    rows = study["rows"]
    if not isinstance(rows, list) or not rows:
        raise LenetEdgeError(f"{path}: rows must be a non-empty list of jobs, got {rows!r:.60}")
    per_model: dict[str, list[float]] = {}
    for i, r in enumerate(rows):
        if not isinstance(r, dict):
            raise LenetEdgeError(f"{path}: rows[{i}] must be an object, got {r!r:.60}")
        model = r.get("model")
        if not isinstance(model, str) or not model.strip():
            raise LenetEdgeError(f"{path}: rows[{i}].model must be a non-empty string, got {model!r:.60}")
        secs = r.get("seconds")
        if not isinstance(secs, dict) or "total" not in secs:
            raise LenetEdgeError(
                f"{path}: rows[{i}].seconds must be an object with 'total', got {secs!r:.60}"
            )
        per_model.setdefault(model, []).append(_seconds(path, f"rows[{i}].seconds.total", secs["total"]))
    return per_model


OVERHEAD_KEYS = ("ray_overhead_per_job_excluding_start_s", "ray_start_stop_s")


def measured_overheads(overhead: Any, path: Path | str) -> tuple[float, float]:
    """(per-job overhead, start+stop) of a `bench-jobs` result, checked. The per-job figure is a
    difference of two measured wall times and may be slightly negative (a fast cluster); the
    start+stop time may not."""
    if not isinstance(overhead, dict):
        raise LenetEdgeError(f"{path}: not a `bench-jobs` result (a JSON object is expected)")
    for key in OVERHEAD_KEYS:
        if key not in overhead:
            raise LenetEdgeError(f"{path}: missing {key!r} (not a `bench-jobs` result)")
    per_job = _seconds(path, OVERHEAD_KEYS[0], overhead[OVERHEAD_KEYS[0]], positive=False)
    start = _seconds(path, OVERHEAD_KEYS[1], overhead[OVERHEAD_KEYS[1]], positive=False)
    if start < 0:
        raise LenetEdgeError(f"{path}: {OVERHEAD_KEYS[1]} must be a finite number >= 0, got {start!r}")
    return per_job, start


def projection_table(
    study: Any,
    overhead: Any,
    nodes: list[int],
    seeds: list[int],
    cores: int = 2,
    study_path: Path | str = "study",
    overhead_path: Path | str = "overhead",
) -> str:
    """Expected study times for N nodes of `cores` cores from a study's measured per-job times.
    Both inputs are checked first; a malformed one is one LenetEdgeError naming its file and field."""
    per_model = study_job_seconds(study, study_path)
    per_job, start = measured_overheads(overhead, overhead_path)
    if per_job + min(min(v) for v in per_model.values()) < 0:
        raise LenetEdgeError(
            f"{overhead_path}: {OVERHEAD_KEYS[0]} {per_job:g} s would make a job of {study_path} "
            "take negative time"
        )
    mean = {m: sum(v) / len(v) for m, v in per_model.items()}
    lines = [
        "| seeds × models | " + " | ".join(f"{n} node{'s' if n > 1 else ''}" for n in nodes) + " |",
        "|---|" + "---:|" * len(nodes),
    ]
    for s in seeds:
        jobs = [mean[m] for m in mean for _ in range(s)]
        cells = [project(jobs, n * cores, per_job, start) / 60 for n in nodes]
        if not all(math.isfinite(c) for c in cells):  # finite inputs whose sum overflows (1e308 s)
            raise LenetEdgeError(f"{study_path}: job times too large to project (the sum is not finite)")
        lines.append(f"| {s} × {len(mean)} | " + " | ".join(f"{c:.0f} min" for c in cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    from lenet_edge.runtime.cli import add_common, parser, path_arg

    p = parser("jobs", "Per-job overhead of the ray backend against the local one (a benchmark).")
    p.add_argument("--count", type=int_range(1, 100_000), default=40, help="jobs per backend (default 40)")
    p.add_argument("--sleep", type=float, default=0.2, help="seconds each job sleeps (default 0.2)")
    p.add_argument("--jobs", type=int_range(1, MAX_JOBS), default=2, help="jobs at once (default 2)")
    add_common(p, "json", json={"default": Path("build/bench/jobs-overhead.json"), "help": "result JSON"})
    p.add_argument(
        "--project",
        type=path_arg,
        default=None,
        metavar="STUDY_JSON",
        help="instead: project study times for 1-16 nodes from a study's per-job times and --json's overheads",
    )
    a = p.parse_args(argv)
    if a.project is not None:
        print(
            projection_table(
                read_json(a.project),
                read_json(a.json),
                [1, 2, 4, 8, 16],
                [5, 20, 50],
                study_path=a.project,
                overhead_path=a.json,
            ),
            end="",
        )
        return 0
    if not (0 <= a.sleep < 60):
        raise ConfigError("--sleep must be within 0..60 s")
    r = overhead_bench(a.count, a.sleep, a.jobs, a.json)
    print(
        f"{a.count} jobs x {a.sleep} s, {a.jobs} at once: local {r['local_wall_s']:.2f} s, "
        f"ray {r['ray_wall_s']:.2f} s (start+stop {r['ray_start_stop_s']:.2f} s): "
        f"ray overhead {r['ray_overhead_per_job_s']:.3f} s per job; wrote {a.json}"
    )
    return 0


if __name__ == "__main__":
    from lenet_edge.runtime.cli import run

    sys.exit(run(main))
