"""``sku-index``: build, update, roll back, list, garbage-collect and verify SKU index versions.

Exit codes (for cron / Kubernetes CronJobs):

====  ==========================================================================================
0     success, including "nothing changed" (inputs identical to the current version)
1     unexpected failure (a bug, or a crash injected with SKU_INDEX_FAIL_AFTER); nothing published
2     usage or configuration error (bad flag or setting, missing or invalid model artifact)
3     data error: more bad rows than SKU_INDEX_MAX_BAD_FRACTION, or nothing to index
4     Redis unreachable or a Redis write failed
5     verify found problems
6     another run holds the lock (retry later)
7     state error: nothing to roll back to, unknown version, no current version to update
130   interrupted
====  ==========================================================================================
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

from service.redis_server import RedisUnavailable, is_redis_error, redis_connection
from service.settings import SettingsError, load_settings
from service.store import SkuStore, StoreError

from . import maintenance
from .build import BuildError, Runner, build
from .lock import LockHeld, RunLock
from .redis_writer import WriteError
from .report import RunReport
from .settings import IndexBuilderSettings
from .update import update

log = logging.getLogger("index_builder")
EXIT_OK, EXIT_BUG, EXIT_CONFIG, EXIT_DATA, EXIT_REDIS, EXIT_VERIFY, EXIT_LOCKED, EXIT_STATE = (
    0, 1, 2, 3, 4, 5, 6, 7)


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--redis-url", help="overrides REDIS_URL (unset: a private throw-away "
                        "redis-server, for demos only)")
    common.add_argument("--key-prefix", help="key namespace (SKU_INDEX_KEY_PREFIX, default sku)")
    common.add_argument("--index-dir", type=Path, help="root of version folders "
                        "(SKU_INDEX_INDEX_DIR, default ./index)")
    common.add_argument("--no-progress", action="store_true", help="no progress bars")
    common.add_argument("--json", action="store_true", help="print the result as JSON")
    common.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    writes = argparse.ArgumentParser(add_help=False)
    writes.add_argument("--artifact", type=Path, help="SICoT artifact folder "
                        "(SKU_INDEX_ARTIFACT_DIR)")
    writes.add_argument("--version", dest="version_id", help="version id (default: UTC time + "
                        "digest of the inputs)")
    writes.add_argument("--force", action="store_true", help="build even if the inputs equal "
                        "the current version's")
    writes.add_argument("--dry-run", action="store_true", help="validate rows and images; "
                        "write nothing, no model or Redis needed for build")
    writes.add_argument("--float-factory", help="FAISS factory string, e.g. Flat, HNSW32, "
                        "'IVF{nlist},Flat' (SKU_INDEX_INDEX__FLOAT_FACTORY)")
    writes.add_argument("--binary", choices=["none", "flat", "hnsw", "ivf"], help="binary "
                        "(Hamming) index kind (SKU_INDEX_INDEX__BINARY__KIND)")
    writes.add_argument("--thumbnails", action="store_true", default=None,
                        help="store a small JPEG per SKU in Redis")
    writes.add_argument("--max-bad-fraction", type=float, help="fail above this bad-row share")
    writes.add_argument("--write-method", choices=["auto", "mass", "pipeline"])
    writes.add_argument("--keep", type=int, help="versions kept for rollback besides current")
    writes.add_argument("--no-gc", action="store_true", help="skip gc after publishing")
    writes.add_argument("--report", type=Path, help="write the summary and every bad row "
                        "(JSON) here")

    p = argparse.ArgumentParser(
        prog="sku-index", description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", parents=[common, writes], help="index a full catalog as a new "
                       "version and publish it")
    b.add_argument("--catalog", type=Path, required=True, help="JSONL manifest or Google "
                   "Product Search CSV")
    b.add_argument("--feedback", action="store_true", help="add accepted user feedback of the "
                   "retention window as extra reference rows (SKU_INDEX_FEEDBACK__* policy)")
    b.add_argument("--pseudo-labels", action="store_true", help="implies --feedback; also add "
                   "confident, index-consistent retained queries without feedback as rows of "
                   "their top-1 (SKU_INDEX_FEEDBACK__PSEUDO_LABELS; off by default: see "
                   "docs/results/feedback-loop.md for what it measured)")
    u = sub.add_parser("update", parents=[common, writes], help="apply a delta manifest "
                       "(upserts, deletes) to the current version as a new version")
    u.add_argument("--delta", type=Path, required=True, help="JSONL with optional \"op\": "
                   "\"upsert\"|\"delete\" per row (see index_builder/delta.py)")
    r = sub.add_parser("rollback", parents=[common], help="make the previous version current")
    r.add_argument("--to", help="a specific published version instead of the previous one")
    sub.add_parser("list", parents=[common], help="list versions (current, published, debris)")
    g = sub.add_parser("gc", parents=[common], help="delete old versions and crash debris")
    g.add_argument("--keep", type=int, help="versions kept for rollback besides current")
    g.add_argument("--dry-run", action="store_true", help="only say what would be deleted")
    v = sub.add_parser("verify", parents=[common], help="check a version against its manifest")
    v.add_argument("--version", dest="version_id", help="default: the current version")
    v.add_argument("--deep", action="store_true", help="compare every SKU hash with the rows")
    return p


def _settings(args: argparse.Namespace) -> IndexBuilderSettings:
    over: dict[str, Any] = {}
    for flag, name in (("redis_url", "redis_url"), ("key_prefix", "key_prefix"),
                       ("index_dir", "index_dir"), ("artifact", "artifact_dir"),
                       ("thumbnails", "thumbnails"), ("max_bad_fraction", "max_bad_fraction"),
                       ("write_method", "write_method"), ("keep", "keep_versions")):
        if getattr(args, flag, None) is not None:
            over[name] = getattr(args, flag)
    settings = load_settings(IndexBuilderSettings, **over)
    spec = settings.index
    if getattr(args, "float_factory", None):
        spec = spec.model_copy(update={"float_factory": args.float_factory})
    if getattr(args, "binary", None):
        spec = spec.model_copy(update={"binary": spec.binary.model_copy(
            update={"kind": args.binary})})
    updates: dict[str, Any] = {"index": spec}
    if getattr(args, "pseudo_labels", False):
        updates["feedback"] = settings.feedback.model_copy(update={"pseudo_labels": True})
    if getattr(args, "no_gc", False):
        updates["gc_after_publish"] = False
    return settings.model_copy(update=updates)


def _emit(args: argparse.Namespace, text: str, data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n" if args.json else text)


def _run_writes(args: argparse.Namespace, runner: Runner) -> int:
    report = RunReport(args.command)
    try:
        if args.command == "build":
            build(runner, args.catalog, version=args.version_id, force=args.force,
                  dry_run=args.dry_run, report=report,
                  feedback=args.feedback or args.pseudo_labels)
        else:
            update(runner, args.delta, version=args.version_id, force=args.force,
                   dry_run=args.dry_run, report=report)
        return EXIT_OK
    finally:
        if report.status == "running":
            report.status = "FAILED (nothing published)"
        if args.report:
            report.write(args.report)
        _emit(args, report.render(), report.to_json())


def _run(args: argparse.Namespace, settings: IndexBuilderSettings) -> int:
    progress = not args.no_progress
    if args.command == "build" and args.dry_run:
        return _run_writes(args, Runner(settings, None, None, progress))
    if not settings.redis_url:
        log.warning("REDIS_URL is not set: using a private throw-away redis-server; whatever "
                    "this command writes disappears when it exits (demo only)")
    with redis_connection(settings.redis_url) as (client, url):
        store = SkuStore(client, settings.key_prefix)
        runner = Runner(settings, store, url, progress)
        if args.command == "list":
            infos = store.list_versions()
            _emit(args, _render_list(infos), [_info_json(i) for i in infos])
            return EXIT_OK
        if args.command == "verify":
            res = maintenance.verify(store, settings.index_dir, args.version_id, deep=args.deep)
            text = f"verify {res.version}: {'ok' if res.ok else 'FAILED'} ({res.checked_files} " \
                   f"files, {res.checked_keys} SKU keys)\n" + "".join(
                       f"  problem: {p}\n" for p in res.problems)
            _emit(args, text, res.__dict__)
            return EXIT_OK if res.ok else EXIT_VERIFY
        with RunLock(client, store.keys.lock, settings.lock_ttl_s, args.command):
            if args.command == "rollback":
                old, new = store.rollback(args.to)
                _emit(args, f"rollback: current version {old} -> {new}\n", {"from": old, "to": new})
                return EXIT_OK
            if args.command == "gc":
                keep = settings.keep_versions
                gcr = maintenance.gc(store, settings.index_dir, keep, dry_run=args.dry_run,
                                     progress=progress)
                _emit(args, f"gc{' (dry run)' if args.dry_run else ''}: kept {gcr.kept}; "
                      f"deleted {gcr.deleted_versions} ({gcr.deleted_keys} keys, folders "
                      f"{gcr.deleted_dirs})\n", gcr.__dict__)
                return EXIT_OK
            return _run_writes(args, runner)


def _info_json(info: Any) -> dict[str, Any]:
    m = info.manifest
    return {"version": info.version, "state": info.state, "started_at": info.started_at,
            "manifest": m.model_dump(mode="json") if m else None}


def _render_list(infos: list[Any]) -> str:
    if not infos:
        return "no versions\n"
    lines = [f"{'version':34} {'state':12} {'kind':7} {'skus':>9} {'images':>9}  built_at"]
    for i in infos:
        m = i.manifest
        lines.append(f"{i.version:34} {i.state:12} {m.kind if m else '-':7} "
                     f"{m.counts.get('skus', 0) if m else 0:>9,} "
                     f"{m.counts.get('images', 0) if m else 0:>9,}  {m.built_at if m else '-'}")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)  # 8 lines about CPU features
    try:
        settings = _settings(args)
        return _run(args, settings)
    except (SettingsError, FileNotFoundError) as exc:
        log.error("%s", exc)
        return EXIT_CONFIG
    except BuildError as exc:
        log.error("%s", exc)
        return exc.exit_code
    except LockHeld as exc:
        log.error("%s", exc)
        return EXIT_LOCKED
    except StoreError as exc:
        log.error("%s", exc)
        return EXIT_STATE
    except (RedisUnavailable, WriteError) as exc:
        log.error("%s", exc)
        return EXIT_REDIS
    except KeyboardInterrupt:
        log.error("interrupted: nothing was published by this run")
        return 130
    except Exception as exc:  # noqa: BLE001 - one exit code per failure class, the rest is 1
        if is_redis_error(exc):
            log.error("Redis error: %s", exc)
            return EXIT_REDIS
        log.exception("unexpected failure: %s", exc)
        return EXIT_BUG


if __name__ == "__main__":
    sys.exit(main())
