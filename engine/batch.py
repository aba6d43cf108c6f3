"""Many scenes: co-register every pair of a CSV manifest, on a Dask cluster or in this process.

    read_manifest(path, defaults) -> list[BatchRow]     every row checked up front; bad rows carry .error
    run_batch(manifest, outdir, defaults, scheduler, workers, overwrite, report) -> BatchResult
    run_pair(task: dict) -> dict                        what a worker runs: plain dict in, plain dict out

Each pair goes through :func:`hsscl.engine.pipeline.coregister` into ``OUTDIR/<id>/``; the summary
``OUTDIR/summary.csv`` is written atomically at the end (also after Ctrl-C). A pair whose folder already
holds a complete run of the same inputs and options is skipped. Workers get only paths and option
dicts (no shell command is ever built from the manifest).
"""
from __future__ import annotations

import csv
import json
import logging
import os
import re
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .config import DESCRIPTORS, DEVICES, GRAPH_MODES, GRIDS, MODALITIES, TRANSFORMS, CoregConfig
from .errors import FolderLockedError, HSSCLError, InputError, OutputError
from .io.lock import FolderLock, new_run_id
from .io.outputset import OutputSet, foreign_entries, recover, verify

SUMMARY_NAME = "summary.csv"
SUMMARY_COLUMNS = ("row", "id", "reference", "target", "status", "model", "rmse_check_px", "rmse_fit_px",
                   "inliers", "confidence", "seconds", "outdir", "message")
#: Exit status of ``hsscl batch`` when at least one pair failed or was not run (the others still ran).
EXIT_PAIRS_FAILED = 1
#: How long a batch on a Dask scheduler waits for a worker before it gives up (``--wait-workers``).
WAIT_WORKERS_S = 120.0
REQUIRED = ("reference", "target")
#: Manifest column (lower case, '-' read as '_') -> (CoregConfig field, kind of value).
OPTION_COLUMNS: dict[str, tuple[str, str]] = {
    "transform": ("transform", "choice"), "grid": ("grid", "choice"), "device": ("device", "choice"),
    "ref_modality": ("ref_modality", "choice"), "tgt_modality": ("tgt_modality", "choice"),
    "descriptor": ("descriptor", "choice"), "graph": ("graph", "choice"),
    "seed": ("seed", "int"), "threads": ("threads", "int"),
    "max_shift": ("max_shift_px", "float"), "max_shift_px": ("max_shift_px", "float"),
    "adapt_budget": ("adapt_budget_s", "float"), "adapt_budget_s": ("adapt_budget_s", "float"),
    "max_rotation_deg": ("max_rotation_deg", "float"), "max_scale_change": ("max_scale_change", "float"),
    "max_rotation": ("max_rotation_deg", "float"), "max_scale": ("max_scale_change", "float"),
    "min_confidence": ("min_confidence", "float"), "keep_best_guess": ("keep_best_guess", "bool"),
    "any_rotation": ("any_rotation", "bool"),
    "denoise": ("denoise", "bool"), "no_denoise": ("denoise", "notbool"), "adapt": ("adapt", "bool"),
    "ref_bands": ("ref_bands", "bands"), "tgt_bands": ("tgt_bands", "bands"),
    "extent": ("extent", "extent"), "weights": ("weights", "path"),
}
_CHOICES = {"transform": TRANSFORMS, "grid": GRIDS, "device": DEVICES, "ref_modality": MODALITIES,
            "tgt_modality": MODALITIES, "descriptor": DESCRIPTORS, "graph": GRAPH_MODES}
_TRUE, _FALSE = {"1", "true", "yes", "y", "on"}, {"0", "false", "no", "n", "off"}
_SEP = re.compile(r"[\s,;|]+")
_WINDOWS_RESERVED = {"con", "prn", "aux", "nul", *(f"com{i}" for i in range(1, 10)), *(f"lpt{i}" for i in range(1, 10))}


@dataclass
class BatchRow:
    """One manifest row: resolved paths, its output folder name and its options (or what is wrong)."""

    row: int                       # data row number (1 = first row under the header)
    line: int                      # line in the manifest file
    id: str
    folder: str                    # safe folder name under OUTDIR
    reference: str
    target: str
    options: dict[str, Any] = field(default_factory=dict)   # CoregConfig overrides of this row
    error: str | None = None


@dataclass
class BatchResult:
    rows: list[dict[str, Any]]
    summary_path: str
    seconds: float
    interrupted: bool = False
    note: str = ""
    interrupted_by: str = ""       # "Ctrl-C" or "SIGTERM"
    stopped: str = ""              # why the batch stopped early (lost scheduler, no worker), else ""

    def count(self, status: str) -> int:
        return sum(r["status"] == status for r in self.rows)

    @property
    def exit_code(self) -> int:
        if self.interrupted:
            return 143 if self.interrupted_by == "SIGTERM" else 130
        return EXIT_PAIRS_FAILED if (self.count("failed") or self.count("not run") or self.stopped) else 0


# ------------------------------------------------------------------------------------------ manifest

def safe_folder_name(text: str) -> str:
    """A folder name made of letters, digits, '.', '_' and '-' only (no path tricks, no reserved names)."""
    s = re.sub(r"[^A-Za-z0-9._-]+", "_", text.strip())
    s = re.sub(r"_+", "_", s).strip("._-")[:80]
    if s.lower().split(".")[0] in _WINDOWS_RESERVED or s.lower() == SUMMARY_NAME:
        s += "_"
    return s


def _value(name: str, kind: str, text: str, base: Path) -> Any:
    low = text.strip().lower()
    if kind == "choice":
        if low not in _CHOICES[name]:
            raise ValueError(f"use one of: {', '.join(_CHOICES[name])}")
        return low
    if kind == "int":
        return int(text)
    if kind == "float":
        v = float(text)
        if not v > 0:
            raise ValueError("must be a positive number")
        return v
    if kind in ("bool", "notbool"):
        if low not in _TRUE | _FALSE:
            raise ValueError("must be true or false")
        return (low in _TRUE) == (kind == "bool")
    if kind == "bands":
        bands = tuple(int(b) for b in _SEP.split(text.strip()) if b)
        if not bands or min(bands) < 1:
            raise ValueError("must be band numbers from 1, e.g. '4,3,2' (quoted) or '4 3 2'")
        return bands
    if kind == "extent":
        ext = tuple(float(x) for x in _SEP.split(text.strip()) if x)
        if len(ext) != 4 or ext[0] >= ext[2] or ext[1] >= ext[3]:
            raise ValueError("must be 'xmin ymin xmax ymax' with xmin < xmax and ymin < ymax")
        return ext
    if kind == "path":
        p = _resolve(text, base)
        if not os.path.isfile(p):
            raise ValueError(f"file not found: {p}")
        return p
    raise AssertionError(kind)  # pragma: no cover


def _resolve(text: str, base: Path) -> str:
    p = Path(os.path.expanduser(text.strip()))
    return os.path.normpath(p if p.is_absolute() else base / p)


def _open_manifest(path: Path) -> tuple[list[str], list[list[str]]]:
    if not path.is_file():
        raise InputError(f"The manifest '{path}' does not exist.", "Give the path of a CSV file with columns "
                         "reference,target (and optionally id and option columns).")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"The manifest '{path}' is not a readable text (CSV) file.",
                         "Save it as CSV (UTF-8) with columns reference,target.", str(exc)) from exc
    lines = [ln for ln in text.splitlines() if ln.strip()]
    if not lines or "\x00" in text:
        raise InputError(f"The manifest '{path}' is empty or not a CSV file.",
                         "Write a header line 'reference,target' and one line per pair.")
    try:
        delim = csv.Sniffer().sniff(lines[0], delimiters=",;\t").delimiter
    except csv.Error:
        delim = ","
    table = list(csv.reader(text.splitlines(), delimiter=delim))
    return [h.strip().lower().replace("-", "_") for h in table[0]], table[1:]


def read_manifest(manifest: str | os.PathLike, defaults: CoregConfig | None = None) -> list[BatchRow]:
    """Read and check every row of ``manifest``.

    Manifest-level problems (missing file, not a CSV, no ``reference``/``target`` columns, unknown or
    repeated columns, no rows, duplicate ids) raise :class:`InputError` before any work. A bad row
    (missing raster, unusable option) is returned with ``error`` set, so the other rows still run.
    """
    path = Path(manifest)
    base = path.resolve().parent
    header, body = _open_manifest(path)
    missing = [c for c in REQUIRED if c not in header]
    if missing:
        raise InputError(f"The manifest '{path}' has no column {' or '.join(repr(c) for c in missing)} "
                         f"(its header is: {', '.join(h for h in header if h) or 'empty'}).",
                         "The first line must name the columns, at least: reference,target.")
    known = {*REQUIRED, "id", *OPTION_COLUMNS}
    unknown = [h for h in header if h not in known and not h.startswith("_")]
    if unknown:
        raise InputError(f"The manifest '{path}' has unknown column(s): {', '.join(unknown)}.",
                         f"Use only: id, reference, target, {', '.join(sorted(OPTION_COLUMNS))} "
                         "(columns whose name starts with '_' are ignored).")
    repeated = sorted({h for h in header if h and header.count(h) > 1})
    if repeated:
        raise InputError(f"The manifest '{path}' names the column(s) {', '.join(repeated)} more than once.",
                         "Keep one column of each name.")
    defaults = defaults or CoregConfig()
    rows: list[BatchRow] = []
    seen: dict[str, BatchRow] = {}
    for n, (line, cells) in enumerate(_data_lines(body), start=1):
        row = _parse_row(n, line, header, cells, base, defaults)
        key = row.folder.lower()
        if key in seen:
            other = seen[key]
            raise InputError(f"Rows {other.row} and {row.row} of '{path}' (lines {other.line} and {row.line}) "
                             f"have the same id '{other.id}' / '{row.id}' (output folder '{row.folder}').",
                             "Give every row its own id (ids differing only in case or punctuation clash too).")
        seen[key] = row
        rows.append(row)
    if not rows:
        raise InputError(f"The manifest '{path}' has a header but no pairs.", "Add one line per pair: reference,target.")
    return rows


def _data_lines(body: list[list[str]]):
    for i, cells in enumerate(body, start=2):
        if not any(c.strip() for c in cells) or cells[0].lstrip().startswith("#"):
            continue  # blank line or comment
        yield i, cells


def _parse_row(n: int, line: int, header: list[str], cells: list[str], base: Path,
               defaults: CoregConfig) -> BatchRow:
    problems: list[str] = []
    if len(cells) > len(header):
        problems.append(f"it has {len(cells)} cells but the header has {len(header)} columns "
                        "(quote values that contain the separator, e.g. \"4,3,2\")")
    values = {h: (cells[i].strip() if i < len(cells) else "") for i, h in enumerate(header) if h}
    ref_txt, tgt_txt = values.get("reference", ""), values.get("target", "")
    given_id = values.get("id", "")
    stem = Path(tgt_txt).stem if tgt_txt else "pair"
    row_id = given_id or f"{n:03d}_{stem}"
    folder = safe_folder_name(row_id) or f"row{n:03d}"
    ref = _resolve(ref_txt, base) if ref_txt else ""
    tgt = _resolve(tgt_txt, base) if tgt_txt else ""
    for name, txt, p in (("reference", ref_txt, ref), ("target", tgt_txt, tgt)):
        if not txt:
            problems.append(f"the {name} cell is empty")
        elif not os.path.isfile(p):
            problems.append(f"the {name} file '{txt}' was not found (looked for {p})")
    options: dict[str, Any] = {}
    for col, txt in values.items():
        if col not in OPTION_COLUMNS or not txt:
            continue  # blank cell = the batch default
        name, kind = OPTION_COLUMNS[col]
        try:
            options[name] = _value(name, kind, txt, base)
        except ValueError as exc:
            problems.append(f"{col} '{txt}' is not usable ({exc})")
    if not problems:
        try:
            defaults.replace(**options)  # validates the choices
        except (InputError, TypeError) as exc:
            problems.append(str(exc))
    error = None
    if problems:
        error = (f"row {n} (line {line}): {'; '.join(x.rstrip('. ') for x in problems)}. Fix this row of the manifest "
                 "(relative paths are read from the manifest's folder) and run the batch again.")
    return BatchRow(n, line, row_id, folder, ref, tgt, options, error)


# ------------------------------------------------------------------------------------------ one pair

def _metrics(report: dict[str, Any]) -> dict[str, Any]:
    r = report.get("rmse_px", {})
    return {"model": report.get("model", {}).get("kind", ""), "rmse_check_px": r.get("check"),
            "rmse_fit_px": r.get("fit"), "inliers": report.get("counts", {}).get("inliers"),
            "confidence": report.get("confidence")}


class TerminatedBySignal(KeyboardInterrupt):
    """SIGTERM, turned into an interrupt so that the batch ends as after Ctrl-C (summary written)."""


class BatchStopped(Exception):
    """The batch cannot go on (the Dask scheduler was lost, no worker came); the rest is 'not run'."""


@contextmanager
def terminate_on_sigterm() -> Iterator[None]:
    """While the block runs (main thread only), SIGTERM raises :class:`TerminatedBySignal`; restored after."""
    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "SIGTERM"):
        yield
        return

    def handler(_signum, _frame):
        raise TerminatedBySignal

    old = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def run_pair(task: dict[str, Any]) -> dict[str, Any]:
    """Co-register one pair (runs on a worker). ``task``: reference, target, outdir, config (dict), run_id.

    Never raises for a failed pair: returns ``{"status": "failed", "message": ...}`` instead.
    """
    from . import pipeline

    t0 = time.perf_counter()
    try:
        config = CoregConfig(**task["config"])
        kw = {"run_id": task["run_id"]} if task.get("run_id") else {}
        res = pipeline.coregister(task["reference"], task["target"], task["outdir"], config, **kw)
        out = {"status": "ok", **_metrics(res.report), "message": ""}
    except FolderLockedError as exc:
        out = {"status": "failed", "message": str(exc)}
    except HSSCLError as exc:
        out = {"status": "failed", "message": f"{type(exc).__name__}: {exc}"}
    except Exception as exc:  # noqa: BLE001 - one broken pair must not stop the others
        out = {"status": "failed", "message": f"unexpected error {type(exc).__name__}: {exc} "
               "(run this pair alone with 'hsscl --debug coregister' to see the traceback)"}
    out["seconds"] = round(time.perf_counter() - t0, 2)
    return out


def _comparable(d: dict) -> dict:
    return {k: v for k, v in json.loads(json.dumps(d, default=list)).items() if k not in ("overwrite", "threads")}


def _same_inputs(report: dict, reference: str, target: str) -> bool:
    return report.get("reference", {}).get("path") == reference and report.get("target", {}).get("path") == target


def finished_report(folder: Path, reference: str, target: str, config: dict[str, Any],
                    run_id: str | None = None) -> dict | None:
    """The record of a complete earlier run of the same pair and options in ``folder``, else None.

    Complete = its report.json verifies (every output it lists has that size and sha256). ``run_id``:
    only a record written by that run counts.
    """
    from .pipeline import OUTPUT_NAMES

    report, problems = verify(folder, required=tuple(OUTPUT_NAMES.values()))
    if report is None or problems:
        return None
    if run_id is not None and (report.get("record") or {}).get("run_id") != run_id:
        return None
    same = _same_inputs(report, reference, target) and _comparable(report.get("config", {})) == _comparable(config)
    return report if same else None


def _plan(row: BatchRow, folder: Path, config: CoregConfig, overwrite: bool) -> tuple[str, str, dict | None]:
    """What to do with one row's folder: ``(action, message, report)``.

    action: ``run`` (empty folder), ``redo`` (our own earlier outputs, replaced), ``skip`` (a verified run of
    the same inputs and options) or ``refuse`` (the folder holds files this batch did not write, or another
    run is writing into it). Takes the folder's lock for a moment to complete or remove what killed runs left.
    """
    from .pipeline import OUTPUT_NAMES

    names = tuple(OUTPUT_NAMES.values())
    if not folder.is_dir():
        return "run", "", None
    try:
        with FolderLock(folder) as lock:
            notes = recover(folder, lock)
    except FolderLockedError as exc:
        return "refuse", f"{exc}; run the batch again when it has finished", None
    except OutputError as exc:
        return "refuse", str(exc), None
    if overwrite:
        return "redo", "; ".join(notes), None
    foreign = foreign_entries(folder, names)
    report, problems = verify(folder, required=names)
    if foreign:
        shown = ", ".join(foreign[:4]) + ("..." if len(foreign) > 4 else "")
        return "refuse", (f"{folder} already holds files this batch did not write ({shown}); move them or use "
                          "--overwrite"), None
    if report is None and not any((folder / n).exists() for n in names):
        return "run", "", None
    if report is not None and not _same_inputs(report, row.reference, row.target):
        ref, tgt = report.get("reference", {}).get("path"), report.get("target", {}).get("path")
        return "refuse", (f"{folder} already holds the outputs of another pair ({tgt} onto {ref}); move them or use "
                          "--overwrite"), None
    if problems:
        return "redo", f"redone: its earlier outputs did not verify ({'; '.join(problems[:3])})", None
    if _comparable(report.get("config", {})) != _comparable(config.to_dict()):  # type: ignore[union-attr]
        return "redo", "redone: its options changed since the earlier run", None
    return "skip", "already done (its report.json verifies: same inputs, options and outputs); --overwrite redoes it", \
        report


# ------------------------------------------------------------------------------------------ the batch

def _one_line(value: Any) -> Any:
    return re.sub(r"\s*[\r\n]+\s*", " ", value).strip() if isinstance(value, str) else value


def _summary_row(row: BatchRow, outdir: Path, **values: Any) -> dict[str, Any]:
    base: dict[str, Any] = {c: "" for c in SUMMARY_COLUMNS}
    base.update(row=row.row, id=row.id, reference=row.reference, target=row.target, outdir=str(outdir / row.folder))
    base.update({k: ("" if v is None else _one_line(v)) for k, v in values.items() if k in base})
    return base


def write_summary(path: Path, rows: list[dict[str, Any]]) -> None:
    """Write ``summary.csv`` at ``path`` (the caller renames it into place)."""
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=SUMMARY_COLUMNS)
        w.writeheader()
        w.writerows(sorted(rows, key=lambda r: r["row"]))


def _line(done: int, total: int, r: dict[str, Any]) -> str:
    if r["status"] == "ok":
        check = r["rmse_check_px"]
        rmse = f"check RMSE {check:.3f} px" if isinstance(check, float) else f"fit RMSE {r['rmse_fit_px']} px"
        what = f"ok ({r['model']}, {rmse}, {r['inliers']} inliers, {r['seconds']} s)"
        if r.get("message"):
            what += f"; {r['message']}"
    elif r["status"] == "skipped":
        what = "skipped (already done)"
    else:
        what = f"{r['status']}: {r['message']}"
    return f"[{done}/{total}] {r['id']}: {what}"


def run_batch(manifest: str | os.PathLike, outdir: str | os.PathLike, defaults: CoregConfig | None = None,
              scheduler: str = "local", workers: int | None = None, overwrite: bool = False,
              report: Callable[[str], None] | None = None, wait_workers: float = WAIT_WORKERS_S,
              notice: Callable[[str], None] | None = None) -> BatchResult:
    """Co-register every pair of ``manifest`` into ``outdir/<id>/`` and write ``outdir/summary.csv``.

    ``scheduler``: ``"local"`` (a Dask LocalCluster of ``workers`` processes, one thread each),
    ``"sync"`` (one after another in this process, no Dask) or the address of a running Dask
    scheduler (``tcp://host:port``). ``defaults`` are the options of every row (cells override them);
    with Dask, torch uses 1 thread per pair unless ``defaults.threads`` says otherwise.
    ``report`` gets one line per finished pair, ``notice`` (default: ``report``) the other news (waiting
    for workers, redone pairs). ``outdir`` is locked for the whole batch (:class:`FolderLockedError` if
    another run holds it). Ctrl-C (or SIGTERM inside :func:`terminate_on_sigterm`) cancels what has not
    finished; the summary then lists those pairs as ``cancelled``. A lost scheduler, or no worker for
    ``wait_workers`` seconds, ends the batch with the pairs not finished as ``not run``.
    """
    t0 = time.perf_counter()
    say = report or (lambda _msg: None)
    tell = notice or say
    defaults = defaults or CoregConfig()
    if defaults.weights:  # workers may run in another folder (or on another machine)
        defaults = defaults.replace(weights=os.path.abspath(defaults.weights))
    mode, address = _scheduler_mode(scheduler)
    if workers is not None and workers < 1:
        raise InputError(f"--workers must be at least 1, got {workers}.", "Give a number of worker processes, e.g. 2.")
    rows = read_manifest(manifest, defaults)
    note = ""
    if mode != "sync" and not _dask_available():
        if mode == "address":
            raise InputError("Connecting to a Dask scheduler needs the Python package 'distributed'.",
                             "Install dask[distributed] (scripts/setup.sh does), or use --scheduler sync.")
        mode, note = "sync", ("note: dask is not installed, so the pairs run one after another in this process "
                              "(install dask[distributed], e.g. with scripts/setup.sh, to run them in parallel)")
        tell(note)
    if mode != "sync" and defaults.threads is None:
        defaults = defaults.replace(threads=1)

    with OutputSet(outdir, {"summary": SUMMARY_NAME}, overwrite=True, record=None) as summary_set:
        out = summary_set.folder
        results: dict[int, dict[str, Any]] = {}
        tasks: list[tuple[BatchRow, dict[str, Any]]] = []
        for row in rows:
            if row.error:
                results[row.row] = _summary_row(row, out, status="failed", message=row.error)
                continue
            config = defaults.replace(**row.options)
            action, message, done = _plan(row, out / row.folder, config, overwrite)
            if action == "skip":
                results[row.row] = _summary_row(row, out, status="skipped", **_metrics(done or {}), message=message)
                continue
            if action == "refuse":
                results[row.row] = _summary_row(row, out, status="failed", message=message)
                continue
            if message:
                tell(f"{row.id}: {message}")
            task: dict[str, Any] = {"reference": row.reference, "target": row.target, "outdir": str(out / row.folder),
                    "config": config.replace(overwrite=action == "redo").to_dict(), "run_id": new_run_id(),
                    "note": message}
            tasks.append((row, task))
        total = len(rows)
        for i, r in enumerate(sorted(results.values(), key=lambda r: r["row"]), start=1):
            say(_line(i, total, r))
        interrupted, stopped = "", ""

        def finished(row: BatchRow, values: dict[str, Any], note: str = "") -> None:
            if values.get("status") == "ok" and note and not values.get("message"):
                values = {**values, "message": note}
            results[row.row] = _summary_row(row, out, **values)
            say(_line(len(results), total, results[row.row]))

        try:
            if tasks:
                run = _run_sync if mode == "sync" else _run_dask
                run(tasks, out, results, finished, address, workers, tell, wait_workers)
        except KeyboardInterrupt as exc:
            interrupted = "SIGTERM" if isinstance(exc, TerminatedBySignal) else "Ctrl-C"
        except BatchStopped as exc:
            stopped = str(exc)
        except BaseException as exc:
            stopped = f"the batch stopped ({exc})"
            raise
        finally:
            for row, task in tasks:
                if row.row in results:
                    continue
                rec = finished_report(out / row.folder, row.reference, row.target, task["config"], task["run_id"])
                if rec is not None:  # it finished on its worker although its answer never came back
                    results[row.row] = _summary_row(row, out, status="ok", **_metrics(rec),
                                                    message="finished (its outputs verify against its report.json)")
            n_done = sum(results[row.row]["status"] in ("ok", "failed") for row, _t in tasks if row.row in results)
            stopped = stopped.replace("{done}", str(n_done))
            for row, _task in tasks:
                if row.row in results:
                    continue
                if interrupted:
                    results[row.row] = _summary_row(
                        row, out, status="cancelled",
                        message=f"cancelled ({interrupted}) before it finished; run the batch again to do it")
                else:
                    results[row.row] = _summary_row(
                        row, out, status="not run", message=f"not run: {stopped or 'the batch stopped'}; run the "
                        "batch again to do it")
            write_summary(Path(summary_set.temp("summary")), list(results.values()))
            summary_set.commit()
    summary = out / SUMMARY_NAME
    return BatchResult(sorted(results.values(), key=lambda r: r["row"]), str(summary),
                       round(time.perf_counter() - t0, 2), bool(interrupted), note, interrupted, stopped)


def _scheduler_mode(scheduler: str | None) -> tuple[str, str | None]:
    s = (scheduler or "local").strip()
    if s.lower() in ("local", "sync"):
        return s.lower(), None
    if re.fullmatch(r"(tcp|tls|ucx|ws|wss)://[^\s/]+:\d+", s) or re.fullmatch(r"[A-Za-z0-9.\-\[\]:]+:\d+", s):
        return "address", s
    raise InputError(f"'{scheduler}' is not a scheduler this batch can use.",
                     "Use 'local' (default: a cluster on this machine), 'sync' (no Dask) or the address of a "
                     "running Dask scheduler, e.g. tcp://10.0.0.5:8786.")


def _dask_available() -> bool:
    try:
        import distributed  # noqa: F401
    except ImportError:
        return False
    return True


def _run_sync(tasks, out, results, on_done, *_args) -> None:
    for row, task in tasks:
        on_done(row, run_pair(task), task.get("note", ""))


def _worker_count(client) -> int:
    try:
        return len(client.scheduler_info().get("workers", {}))
    except Exception:  # noqa: BLE001 - no answer: counted as none
        return 0


def _wait_for_workers(client, address: str, wait_s: float, tell: Callable[[str], None]) -> None:
    """Return when a worker is connected; say so within seconds while there is none; give up after wait_s."""
    t0, said = time.monotonic(), -1e9
    while True:
        try:
            client.wait_for_workers(1, timeout=2)
            return
        except (TimeoutError, OSError):
            pass
        waited = time.monotonic() - t0
        if waited >= wait_s:
            raise BatchStopped(f"no Dask worker connected to the scheduler at {address} within {wait_s:.0f} s; start "
                               f"workers ('dask worker {address} --nthreads 1') and run the same command again")
        if waited - said >= 30:
            tell(f"waiting for workers on {address}: {_worker_count(client)} connected (giving up after "
                 f"{wait_s:.0f} s; --wait-workers changes this)")
            said = waited


def _lost(exc: BaseException | None, client) -> bool:
    text = f"{type(exc).__name__}: {exc}" if exc is not None else ""
    return "scheduler-connection-lost" in text or getattr(client, "status", "running") not in ("running", "newly-created")


def _run_dask(tasks, out, results, on_done, address, workers, tell=None, wait_workers=WAIT_WORKERS_S) -> None:
    import dask
    from distributed import Client, LocalCluster
    from distributed.client import FutureCancelledError

    tell = tell or (lambda _m: None)
    cluster = None
    with dask.config.set({"distributed.scheduler.allowed-failures": 1}):
        try:
            if address is None:
                n = max(1, min(workers or os.cpu_count() or 1, len(tasks)))
                cluster = LocalCluster(n_workers=n, threads_per_worker=1, processes=True, dashboard_address=None,
                                       memory_limit=0, silence_logs=logging.ERROR)
                client = Client(cluster)
                where = cluster.scheduler_address
            else:
                try:
                    client = Client(address, timeout="15s")
                except (OSError, TimeoutError) as exc:
                    raise InputError(f"Cannot connect to the Dask scheduler at {address}.",
                                     "Check the address and that 'dask scheduler' and its workers run there, "
                                     "or leave --scheduler out to use a cluster on this machine.", str(exc)) from exc
                where = address
            try:
                _wait_for_workers(client, where, wait_workers, tell)
                pending = {}
                for row, task in tasks:
                    fut = client.submit(run_pair, task, pure=False, key=f"hsscl-pair-{row.folder}-{os.urandom(4).hex()}")
                    pending[fut.key] = (row, task, fut)
                try:
                    _collect(client, pending, on_done, where, len(tasks), wait_workers, tell, FutureCancelledError)
                except KeyboardInterrupt:
                    client.cancel([f for _r, _t, f in pending.values() if not f.done()])
                    for row, task, fut in list(pending.values()):  # finished before the interrupt: keep them
                        if fut.status == "finished":
                            try:
                                on_done(row, fut.result(timeout=2), task.get("note", ""))
                            except Exception:  # noqa: BLE001 - its record is checked afterwards anyway
                                pass
                    raise
            finally:
                _quietly(lambda: client.close(timeout=5))
        finally:
            if cluster is not None:
                _quietly(cluster.close)


def _collect(client, pending, on_done, where, total, wait_workers, tell, cancelled_type) -> None:
    """Hand each finished pair to ``on_done``; raise BatchStopped when the scheduler or every worker is gone."""
    from distributed import KilledWorker

    no_worker_since, said = None, -1e9
    while pending:
        for key, (row, task, fut) in list(pending.items()):
            if fut.status == "finished":
                try:
                    values = fut.result(timeout=5)
                except Exception as exc:  # noqa: BLE001 - lost between 'finished' and the transfer
                    if _lost(exc, client):
                        break
                    values = {"status": "failed", "message": f"its result could not be fetched ({exc})"}
            elif fut.status == "error":
                err = fut.exception(timeout=5)
                if isinstance(err, KilledWorker):
                    values = {"status": "failed", "message": f"the worker running this pair stopped twice ({err}); "
                              "it may have run out of memory: lower --workers for very large rasters"}
                else:
                    values = {"status": "failed", "message": f"the worker running this pair failed "
                              f"({type(err).__name__}: {err})"}
            elif fut.status == "cancelled":
                break  # we cancel only after Ctrl-C: a cancel here is the scheduler's connection lost
            else:
                continue
            del pending[key]
            on_done(row, values, task.get("note", ""))
        if not pending:
            return
        if _lost(None, client) or any(f.status == "cancelled" for _r, _t, f in pending.values()):
            raise BatchStopped(f"lost the Dask scheduler at {where} after {{done}} of {total} pair(s) had finished; "
                               "start the scheduler and its workers again and run the same command to do the rest "
                               "(finished pairs are skipped)")
        n = _worker_count(client)
        now = time.monotonic()
        if n:
            no_worker_since = None
        else:
            no_worker_since = no_worker_since or now
            if now - no_worker_since >= wait_workers:
                raise BatchStopped(f"no Dask worker has been connected to {where} for {wait_workers:.0f} s; start "
                                   "workers and run the same command again to do the rest (finished pairs are skipped)")
            if now - said >= 30:
                tell(f"waiting for workers on {where}: 0 connected")
                said = now
        time.sleep(0.25)


def _quietly(close: Callable[[], Any]) -> None:
    try:
        close()
    except Exception:  # noqa: BLE001 - closing after Ctrl-C or a lost worker may complain
        pass


def print_batch_result(res: BatchResult) -> int:
    """Print the closing summary of ``hsscl batch``; return its exit status. The last line says why it stopped."""
    statuses = ("ok", "failed", "skipped", "cancelled", "not run")
    counts = ", ".join(f"{res.count(s)} {s}" for s in statuses if res.count(s))
    print(f"Batch of {len(res.rows)} pair(s) in {res.seconds:.1f} s: {counts}. Summary: {res.summary_path}")
    for r in res.rows:
        if r["status"] == "failed":
            print(f"  failed {r['id']}: {r['message']}")
    if res.interrupted:
        print(f"Interrupted ({res.interrupted_by or 'Ctrl-C'}): the pairs that had not finished are listed as "
              "cancelled; run the same command again to finish them (done pairs are skipped).")
    if res.stopped:
        print(f"hsscl batch: stopped: {res.stopped}")
    return res.exit_code
