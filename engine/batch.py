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
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .config import DESCRIPTORS, DEVICES, GRAPH_MODES, GRIDS, MODALITIES, TRANSFORMS, CoregConfig
from .errors import HSSCLError, InputError
from .io.output import atomic_path, prepare_outdir

SUMMARY_NAME = "summary.csv"
SUMMARY_COLUMNS = ("row", "id", "reference", "target", "status", "model", "rmse_check_px", "rmse_fit_px",
                   "inliers", "seconds", "outdir", "message")
#: Exit status of ``hsscl batch`` when at least one pair failed (the others still ran).
EXIT_PAIRS_FAILED = 1
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

    def count(self, status: str) -> int:
        return sum(r["status"] == status for r in self.rows)

    @property
    def exit_code(self) -> int:
        if self.interrupted:
            return 130
        return EXIT_PAIRS_FAILED if self.count("failed") else 0


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
            "rmse_fit_px": r.get("fit"), "inliers": report.get("counts", {}).get("inliers")}


def run_pair(task: dict[str, Any]) -> dict[str, Any]:
    """Co-register one pair (runs on a worker). ``task``: reference, target, outdir, config (dict).

    Never raises for a failed pair: returns ``{"status": "failed", "message": ...}`` instead.
    """
    from . import pipeline

    t0 = time.perf_counter()
    try:
        config = CoregConfig(**task["config"])
        res = pipeline.coregister(task["reference"], task["target"], task["outdir"], config)
        out = {"status": "ok", **_metrics(res.report), "message": ""}
    except HSSCLError as exc:
        out = {"status": "failed", "message": f"{type(exc).__name__}: {exc}"}
    except Exception as exc:  # noqa: BLE001 - one broken pair must not stop the others
        out = {"status": "failed", "message": f"unexpected error {type(exc).__name__}: {exc} "
               "(run this pair alone with 'hsscl --debug coregister' to see the traceback)"}
    out["seconds"] = round(time.perf_counter() - t0, 2)
    return out


def finished_report(folder: Path, reference: str, target: str, config: dict[str, Any]) -> dict | None:
    """The report of a complete earlier run of the same pair and options in ``folder``, else None."""
    from .pipeline import OUTPUT_NAMES

    try:
        report = json.loads((folder / OUTPUT_NAMES["report"]).read_text())
    except (OSError, ValueError):
        return None
    if not all((folder / name).is_file() for name in OUTPUT_NAMES.values()):
        return None

    def comparable(d: dict) -> dict:
        return {k: v for k, v in json.loads(json.dumps(d, default=list)).items() if k not in ("overwrite", "threads")}

    same = (report.get("reference", {}).get("path") == reference and report.get("target", {}).get("path") == target
            and comparable(report.get("config", {})) == comparable(config))
    return report if same else None


def _clean_temporaries(folder: Path) -> None:
    """Remove temporary files a killed run may have left (``.name.tmp-xxxx.ext``)."""
    if folder.is_dir():
        for p in folder.glob(".*.tmp-*"):
            try:
                p.unlink()
            except OSError:
                pass


# ------------------------------------------------------------------------------------------ the batch

def _summary_row(row: BatchRow, outdir: Path, **values: Any) -> dict[str, Any]:
    base: dict[str, Any] = {c: "" for c in SUMMARY_COLUMNS}
    base.update(row=row.row, id=row.id, reference=row.reference, target=row.target, outdir=str(outdir / row.folder))
    base.update({k: ("" if v is None else v) for k, v in values.items() if k in base})
    return base


def write_summary(path: Path, rows: list[dict[str, Any]]) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            w = csv.DictWriter(f, fieldnames=SUMMARY_COLUMNS)
            w.writeheader()
            w.writerows(sorted(rows, key=lambda r: r["row"]))


def _line(done: int, total: int, r: dict[str, Any]) -> str:
    if r["status"] == "ok":
        check = r["rmse_check_px"]
        rmse = f"check RMSE {check:.3f} px" if isinstance(check, float) else f"fit RMSE {r['rmse_fit_px']} px"
        what = f"ok ({r['model']}, {rmse}, {r['inliers']} inliers, {r['seconds']} s)"
    elif r["status"] == "skipped":
        what = "skipped (already done)"
    else:
        what = f"{r['status']}: {r['message']}"
    return f"[{done}/{total}] {r['id']}: {what}"


def run_batch(manifest: str | os.PathLike, outdir: str | os.PathLike, defaults: CoregConfig | None = None,
              scheduler: str = "local", workers: int | None = None, overwrite: bool = False,
              report: Callable[[str], None] | None = None) -> BatchResult:
    """Co-register every pair of ``manifest`` into ``outdir/<id>/`` and write ``outdir/summary.csv``.

    ``scheduler``: ``"local"`` (a Dask LocalCluster of ``workers`` processes, one thread each),
    ``"sync"`` (one after another in this process, no Dask) or the address of a running Dask
    scheduler (``tcp://host:port``). ``defaults`` are the options of every row (cells override them);
    with Dask, torch uses 1 thread per pair unless ``defaults.threads`` says otherwise.
    ``report`` gets one line per finished pair. Ctrl-C cancels what has not finished; the summary
    then lists those pairs as ``cancelled``.
    """
    t0 = time.perf_counter()
    say = report or (lambda _msg: None)
    defaults = defaults or CoregConfig()
    if defaults.weights:  # workers may run in another folder (or on another machine)
        defaults = defaults.replace(weights=os.path.abspath(defaults.weights))
    mode, address = _scheduler_mode(scheduler)
    if workers is not None and workers < 1:
        raise InputError(f"--workers must be at least 1, got {workers}.", "Give a number of worker processes, e.g. 2.")
    rows = read_manifest(manifest, defaults)
    out = prepare_outdir(outdir).resolve()
    note = ""
    if mode != "sync" and not _dask_available():
        if mode == "address":
            raise InputError("Connecting to a Dask scheduler needs the Python package 'distributed'.",
                             "Install dask[distributed] (scripts/setup.sh does), or use --scheduler sync.")
        mode, note = "sync", ("note: dask is not installed, so the pairs run one after another in this process "
                              "(install dask[distributed], e.g. with scripts/setup.sh, to run them in parallel)")
        say(note)
    if mode != "sync" and defaults.threads is None:
        defaults = defaults.replace(threads=1)

    results: dict[int, dict[str, Any]] = {}
    tasks: list[tuple[BatchRow, dict[str, Any]]] = []
    for row in rows:
        if row.error:
            results[row.row] = _summary_row(row, out, status="failed", message=row.error)
            continue
        config = defaults.replace(**row.options)
        folder = out / row.folder
        done = None if overwrite else finished_report(folder, row.reference, row.target, config.to_dict())
        if done is not None:
            results[row.row] = _summary_row(row, out, status="skipped", **_metrics(done),
                                            message="already done (complete outputs of the same inputs and "
                                                    "options); --overwrite redoes it")
            continue
        _clean_temporaries(folder)
        task = {"reference": row.reference, "target": row.target, "outdir": str(folder),
                "config": config.replace(overwrite=True).to_dict()}
        tasks.append((row, task))
    total = len(rows)
    for i, r in enumerate(sorted(results.values(), key=lambda r: r["row"]), start=1):
        say(_line(i, total, r))
    interrupted, stopped = False, ""
    try:
        if tasks:
            run = _run_sync if mode == "sync" else _run_dask
            run(tasks, out, results, lambda r: say(_line(len(results), total, r)), address, workers)
    except KeyboardInterrupt:
        interrupted = True
    except BaseException as exc:
        stopped = f"not run: the batch stopped ({exc})"
        raise
    finally:
        for row, _task in tasks:
            if row.row not in results:
                results[row.row] = _summary_row(
                    row, out, status="failed" if stopped else "cancelled",
                    message=stopped or "cancelled (Ctrl-C) before it finished; run the batch again to do it")
        summary = out / SUMMARY_NAME
        write_summary(summary, list(results.values()))
    return BatchResult(sorted(results.values(), key=lambda r: r["row"]), str(summary),
                       round(time.perf_counter() - t0, 2), interrupted, note)


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


def _run_sync(tasks, out, results, on_done, _address, _workers) -> None:
    for row, task in tasks:
        results[row.row] = _summary_row(row, out, **run_pair(task))
        on_done(results[row.row])


def _run_dask(tasks, out, results, on_done, address, workers) -> None:
    import dask
    from distributed import Client, LocalCluster, as_completed

    cluster = None
    with dask.config.set({"distributed.scheduler.allowed-failures": 1}):
        try:
            if address is None:
                n = max(1, min(workers or os.cpu_count() or 1, len(tasks)))
                cluster = LocalCluster(n_workers=n, threads_per_worker=1, processes=True, dashboard_address=None,
                                       memory_limit=0, silence_logs=logging.ERROR)
                client = Client(cluster)
            else:
                try:
                    client = Client(address, timeout="15s")
                except (OSError, TimeoutError) as exc:
                    raise InputError(f"Cannot connect to the Dask scheduler at {address}.",
                                     "Check the address and that 'dask scheduler' and its workers run there, "
                                     "or leave --scheduler out to use a cluster on this machine.", str(exc)) from exc
            try:
                by_key = {}
                for row, task in tasks:
                    fut = client.submit(run_pair, task, pure=False, key=f"hsscl-pair-{row.folder}-{os.urandom(4).hex()}")
                    by_key[fut.key] = (row, fut)
                try:
                    for fut in as_completed([f for _r, f in by_key.values()]):
                        row = by_key[fut.key][0]
                        try:
                            values = fut.result()
                        except Exception as exc:  # noqa: BLE001 - the worker died (memory?) or was lost
                            values = {"status": "failed", "message": f"the worker running this pair stopped "
                                      f"({type(exc).__name__}: {exc}); lower --workers if memory is short"}
                        results[row.row] = _summary_row(row, out, **values)
                        on_done(results[row.row])
                except KeyboardInterrupt:
                    client.cancel([f for _r, f in by_key.values() if not f.done()])
                    raise
            finally:
                _quietly(client.close)
        finally:
            if cluster is not None:
                _quietly(cluster.close)


def _quietly(close: Callable[[], Any]) -> None:
    try:
        close()
    except Exception:  # noqa: BLE001 - closing after Ctrl-C or a lost worker may complain
        pass


def print_batch_result(res: BatchResult) -> int:
    """Print the closing summary of ``hsscl batch``; return its exit status."""
    counts = ", ".join(f"{res.count(s)} {s}" for s in ("ok", "failed", "skipped", "cancelled") if res.count(s))
    print(f"Batch of {len(res.rows)} pair(s) in {res.seconds:.1f} s: {counts}. Summary: {res.summary_path}")
    for r in res.rows:
        if r["status"] == "failed":
            print(f"  failed {r['id']}: {r['message']}")
    if res.interrupted:
        print("Interrupted: the pairs that had not finished are listed as cancelled; run the same command "
              "again to finish them (done pairs are skipped).")
    return res.exit_code
