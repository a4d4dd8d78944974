"""A simulated week of traffic with feedback, through the real online path (``Recognizer``,
real Redis, the real index builder with ``--feedback``).

Each SKU has 2 query photos: the first is *traffic*, the second *test*.  Traffic is
recognised by today's model and index and retained; a share ``p`` of the shoppers (one API key
each) give feedback, of which a share ``e`` names a wrong SKU; optionally an adversary key
sends 500 wrong ``correct`` labels for 50 SKUs.  Then ``build --feedback`` publishes a version
and the *test* photos are recognised again (whole photo → localizer if given → recognizer →
index → fusion).  Prints and writes top-1/top-3 overall/head/tail, and on the attacked SKUs.

    python bench/feedback_eval.py --catalog C/catalog/manifest.jsonl \\
        --queries C/queries/manifest.jsonl --artifact A [--localizer L] --out OUT
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from index_builder.build import Runner, build
from index_builder.settings import IndexBuilderSettings
from service.artifact import load_artifact
from service.catalog import CatalogItem, read_catalog
from service.feedback import FeedbackLog, encode_jpeg
from service.feedback_gate import FeedbackPolicy
from service.imageio import load_image
from service.preprocess import crop_rect
from service.recognition import OnlineConfig, RecognizeOptions
from service.recognizer import Recognizer
from service.redis_server import redis_connection
from service.snapshot import load_snapshot
from service.store import SkuStore

NO_GATE = FeedbackPolicy(min_votes=1, model_votes=False, reputation_min_labels=10**9,
                         max_rows_per_key_per_sku=10**6, agree_sim=2.0)
# the settings a deployment can choose (``SKU_INDEX_FEEDBACK__*``): the default gate; a lone
# key's label accepted (key reputation, bulk-sender rule and quotas still apply); no gate
POLICIES: dict[str, FeedbackPolicy] = {"gate": FeedbackPolicy(),
                                       "single key": FeedbackPolicy(min_votes=1),
                                       "no gate": NO_GATE}


def split_queries(items: list[CatalogItem]) -> tuple[list[CatalogItem], list[CatalogItem]]:
    by_sku: dict[str, list[CatalogItem]] = defaultdict(list)
    for it in sorted(items, key=lambda it: it.image):
        by_sku[it.sku_id].append(it)
    pairs = [v[:2] for v in by_sku.values() if len(v) >= 2]
    return [p[0] for p in pairs], [p[1] for p in pairs]


def run_all(rec: Recognizer, snap: Any, store: SkuStore, items: list[CatalogItem]) -> list[Any]:
    out = []
    for it in items:
        out.append(rec.recognize(load_image(it.image), snap, store, RecognizeOptions(top_k=5)))
    return out


def scores(results: list[Any], items: list[CatalogItem], head: set[str],
           attacked: set[str]) -> dict[str, float]:
    hits = {1: [], 3: []}  # type: dict[int, list[bool]]
    for r, it in zip(results, items, strict=True):
        names = [c.sku_id for c in r.candidates]
        for k in hits:
            hits[k].append(it.sku_id in names[:k])
    groups = {"all": [True] * len(items), "head": [it.sku_id in head for it in items],
              "tail": [it.sku_id not in head for it in items],
              "attacked": [it.sku_id in attacked for it in items],
              "rest": [it.sku_id not in attacked for it in items]}
    out = {}
    for g, mask in groups.items():
        for k, h in hits.items():
            sel = [x for x, m in zip(h, mask, strict=True) if m]
            out[f"{g}_top{k}"] = round(100 * float(np.mean(sel)), 1) if sel else float("nan")
    return out


def simulate(flog: FeedbackLog, traffic: list[CatalogItem], crops: list[bytes],
             answers: list[dict[str, Any]], skus: list[str], p: float, e: float,
             adversary: bool, attacked: list[str], seed: int) -> int:
    rng = np.random.default_rng(seed)
    sent = 0
    for i, it in enumerate(traffic):
        flog.retain(f"t{i}", f"user{i}", crops[i], answers[i], 86400)
        if rng.random() >= p:
            continue
        label = it.sku_id
        if rng.random() < e:
            label = str(rng.choice([s for s in skus if s != it.sku_id]))
        cands = [c["sku_id"] for c in answers[i]["candidates"]]
        kind = "confirm" if cands and label == cands[0] else (
            "click" if label in cands else "correct")
        rank = cands.index(label) + 1 if kind == "click" else None
        query = flog.get(f"t{i}")
        assert query is not None
        flog.record(query, kind, label, rank, 10**6)
        sent += 1
    if adversary:
        for j in range(500):
            i = j % len(traffic)
            target = attacked[j % len(attacked)]
            if target == traffic[i].sku_id:
                target = attacked[(j + 1) % len(attacked)]
            flog.retain(f"adv{j}", "adversary", crops[i], answers[i], 86400)
            query = flog.get(f"adv{j}")
            assert query is not None
            flog.record(query, "correct", target, None, 10**6)
            sent += 1
    return sent


@dataclass(frozen=True)
class Setting:
    """One row: what feedback is simulated, which gate and artifact serve the test photos."""

    name: str
    p: float = 0.0
    e: float = 0.0
    adversary: bool = False
    policy: str = "gate"
    feedback: bool = True
    true_box: bool = False  # the naive calibration: traffic's true-box crops are retained
    adabn: str | None = None  # AdaBN scope on the retained traffic crops (training.adabn)
    index_weight: float | None = None  # OnlineConfig.index_weight (None: the default)
    retrained: bool = False  # serve --retrained instead of --artifact
    pseudo: bool = False  # FeedbackPolicy.pseudo_labels (confident unlabelled traffic → rows)


ROW_GROUPS = ("grid", "adversary", "adversary-gate", "policy", "policy-adversary", "naive",
              "weight", "extras", "adabn", "adabn-feedback", "retrained", "pseudo")
EXTRAS = ("policy", "policy-adversary", "naive", "weight")  # what --rows extras stands for


def settings(args: argparse.Namespace) -> list[Setting]:
    groups = set(args.rows.split(","))
    if groups - set(ROW_GROUPS):
        raise SystemExit(f"--rows: unknown group(s) {sorted(groups - set(ROW_GROUPS))}")
    if "extras" in groups:
        groups |= set(EXTRAS)
    if "adabn" in groups and args.rows_adabn_feedback:
        groups.add("adabn-feedback")
    out = [Setting("today (no feedback)", feedback=False)]
    if "grid" in groups:
        out += [Setting(f"same-night index feedback, p={p}, e={e} (gate)", float(p), float(e))
                for p in args.ps.split(",") for e in args.es.split(",")]
    if "adversary-gate" in groups and "adversary" not in groups:
        out.append(Setting("same-night index feedback, p=0.3, e=0.1, + adversary (gate)", 0.3,
                           0.1, True))
    if "adversary" in groups:
        out += [Setting("same-night index feedback, p=0.3, e=0.1, + adversary (gate)", 0.3, 0.1,
                        True),
                Setting("same-night index feedback, p=0.3, e=0.1, + adversary (no gate)", 0.3,
                        0.1, True, "no gate")]
    if "policy" in groups:
        out.append(Setting("same-night index feedback, p=0.3, e=0.1 (single key)", 0.3, 0.1,
                           False, "single key"))
    if "policy-adversary" in groups:
        out.append(Setting("same-night index feedback, p=0.3, e=0.1, + adversary (single key)",
                           0.3, 0.1, True, "single key"))
    if "naive" in groups:
        out.append(Setting("naive: true-box crops, p=0.3, e=0 (no gate)", 0.3, 0.0, False,
                           "no gate", true_box=True))
    w = args.index_weight
    if "weight" in groups:
        out += [
            Setting(f"today, index weight {w}", feedback=False, index_weight=w),
            Setting(f"same-night index feedback, p=0.3, e=0.1 (gate), index weight {w}", 0.3,
                    0.1, index_weight=w),
            Setting(f"same-night index feedback, p=0.3, e=0.1 (single key), index weight {w}",
                    0.3, 0.1, False, "single key", index_weight=w),
        ]
    for scope in [x for x in args.adabn.split(",") if x]:
        if "adabn" in groups:
            out.append(Setting(f"AdaBN ({scope}) on the traffic crops, no feedback",
                               feedback=False, adabn=scope))
        if "adabn-feedback" in groups:
            out.append(Setting(f"AdaBN ({scope}) + same-night index feedback, p=0.3, e=0.1 "
                               "(gate)", 0.3, 0.1, adabn=scope))
    if "pseudo" in groups:
        out += [Setting("pseudo-labels only (no feedback)", 0.0, 0.0, pseudo=True),
                Setting("pseudo-labels + same-night index feedback, p=0.3, e=0.1 (gate)", 0.3,
                        0.1, pseudo=True),
                Setting("pseudo-labels + same-night index feedback, p=0.3, e=0.1, + adversary "
                        "(gate)", 0.3, 0.1, True, pseudo=True)]
    if "retrained" in groups:
        if args.retrained is None:
            raise SystemExit("--rows retrained needs --retrained ARTIFACT")
        out += [Setting("retrained on the exported pairs (p=0.3, e=0.1, gate), no index "
                        "feedback", feedback=False, retrained=True),
                Setting("retrained + same-night index feedback, p=0.3, e=0.1 (gate)", 0.3, 0.1,
                        retrained=True)]
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--catalog", type=Path, required=True)
    ap.add_argument("--queries", type=Path, required=True)
    ap.add_argument("--artifact", type=Path, required=True)
    ap.add_argument("--localizer", type=Path)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--ps", default="0.1,0.3,1.0")
    ap.add_argument("--es", default="0,0.1")
    ap.add_argument("--rows", default="grid,adversary",
                    help="row groups besides today's: grid (p x e, gate); adversary (with and "
                    "without the gate; adversary-gate: with it only); policy (the single-key "
                    "policy; policy-adversary: with the adversary); naive (the true-box "
                    "calibration); weight (a higher index weight); extras (these four); adabn "
                    "(adabn-feedback: with feedback); retrained; pseudo (pseudo-labels alone, with "
                    "feedback, with the adversary)")
    ap.add_argument("--rows-adabn-feedback", action=argparse.BooleanOptionalAction,
                    default=True, help="--rows adabn includes adabn-feedback")
    ap.add_argument("--export-pairs", type=Path,
                    help="write the accepted pairs of p=0.3, e=0.1 (gate) as `sku-feedback "
                    "export` does (the training manifest of the weekly retraining)")
    ap.add_argument("--retrained", type=Path, help="the artifact retrained on those pairs")
    ap.add_argument("--index-weight", type=float, default=0.75,
                    help="the index weight of the extras rows")
    ap.add_argument("--adabn", default="trunk,backbone",
                    help="AdaBN scopes of the adabn rows (training.adabn)")
    ap.add_argument("--threads", type=int, default=2, help="torch threads (AdaBN)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    t0 = time.perf_counter()
    sicot = load_artifact(args.artifact)
    loc = load_artifact(args.localizer) if args.localizer else None
    recognizers: dict[tuple[str, float | None], Recognizer] = {}

    def recognizer(artifact_dir: Path, weight: float | None) -> Recognizer:
        key = (str(artifact_dir), weight)
        if key not in recognizers:
            art = sicot if artifact_dir == args.artifact else load_artifact(artifact_dir)
            cfg = OnlineConfig() if weight is None else OnlineConfig(index_weight=weight)
            recognizers[key] = Recognizer(art, loc, cfg)
        return recognizers[key]

    rec = recognizer(args.artifact, None)
    labels = sicot.config.labels
    assert labels is not None
    head = {s for s, n in zip(labels.sku_ids, labels.train_counts, strict=True) if n >= 20}
    traffic, test = split_queries(read_catalog(args.queries).items)
    skus = sorted({it.sku_id for it in read_catalog(args.catalog).items})
    attacked = [str(s) for s in np.random.default_rng(args.seed).choice(
        skus, min(50, len(skus) // 2), replace=False)]
    rows: list[dict[str, Any]] = []
    with redis_connection(None) as (client, url):
        def publish(prefix: str, feedback: bool, policy: FeedbackPolicy,
                    artifact_dir: Path) -> tuple[Any, SkuStore, str]:
            s = IndexBuilderSettings(key_prefix=prefix, index_dir=args.out / "index",
                                     artifact_dir=artifact_dir, feedback=policy,
                                     recall_queries=0, gc_after_publish=False)
            store = SkuStore(client, prefix)
            rep = build(Runner(s, store, url, progress=False), args.catalog, feedback=feedback,
                        version=f"{prefix}-v", force=True)
            return load_snapshot(store, s.index_dir, f"{prefix}-v"), store, " ".join(rep.notes)

        snap, store, _ = publish("base", False, FeedbackPolicy(), args.artifact)
        results = run_all(rec, snap, store, traffic)
        crops: dict[bool, list[bytes]] = {False: [], True: []}
        answers = []
        for it, r in zip(traffic, results, strict=True):
            img = load_image(it.image)
            crops[False].append(encode_jpeg(img.crop(crop_rect(r.box, 0.0, img.size)), 256))
            true = it.box if it.box is not None else (0, 0, *img.size)
            crops[True].append(encode_jpeg(img.crop(crop_rect(true, 0.0, img.size)), 256))
            # what the service retains (service/api/retention.py): the gate and the
            # pseudo-labels read the candidates' SKUs, scores and sources and the shortlist
            answers.append({"candidates": [{"sku_id": c.sku_id, "score": c.score,
                                            "source": c.source} for c in r.candidates],
                            "shortlist": r.main.shortlist})
        adapted: dict[str, Path] = {}
        for n, st in enumerate(settings(args)):
            t1 = time.perf_counter()
            artifact_dir = args.retrained if st.retrained else args.artifact
            if st.adabn is not None:
                if st.adabn not in adapted:
                    from training.adabn import adabn_artifact

                    torch_threads(args.threads)
                    adapted[st.adabn] = adabn_artifact(
                        args.artifact, crops[False], out_dir=args.out / "adabn",
                        name=f"adabn-{st.adabn}", scope=st.adabn, overwrite=True)  # type: ignore[arg-type]
                artifact_dir = adapted[st.adabn]
            prefix = f"c{n}"
            sent = 0
            if st.feedback:
                flog = FeedbackLog(client, prefix)
                # the same shoppers for the same (p, e) in every row: rows differ only in
                # what the row names (gate, artifact, weight)
                shoppers = args.seed * 1_000_003 + round(st.p * 1000) * 1000 + round(st.e * 1000)
                sent = simulate(flog, traffic, crops[st.true_box], answers, skus, st.p, st.e,
                                st.adversary, attacked, shoppers)
            policy = POLICIES[st.policy].model_copy(update={"pseudo_labels": st.pseudo})
            snap, store, notes = publish(prefix, st.feedback, policy, artifact_dir)
            if (args.export_pairs and not st.pseudo
                    and (st.p, st.e, st.adversary, st.policy) == (0.3, 0.1, False, "gate")
                    and artifact_dir == args.artifact and not args.export_pairs.exists()):
                export_pairs(url, prefix, artifact_dir, args.catalog, args.export_pairs)
            res = scores(run_all(recognizer(artifact_dir, st.index_weight), snap, store, test),
                         test, head, set(attacked))
            rows.append({"setting": st.name, **res, "feedback_sent": sent, "notes": notes,
                         "seconds": round(time.perf_counter() - t1, 1)})
            print(st.name, {k: v for k, v in res.items() if k.startswith("all")}, notes,
                  flush=True)
    summary = {"traffic": len(traffic), "test": len(test), "skus": len(skus),
               "head_skus": len(head), "attacked": attacked, "rows": rows,
               "seconds": round(time.perf_counter() - t0, 1),
               "artifact": sicot.config.model_version,
               "localizer": loc.config.model_version if loc else None,
               "command": " ".join(sys.argv)}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "feedback_eval.json").write_text(json.dumps(summary, indent=2))
    cols = ["all_top1", "all_top3", "head_top1", "tail_top1", "attacked_top1", "rest_top1"]
    print("| setting | " + " | ".join(cols) + " | feedback sent |")
    print("|---" * (len(cols) + 2) + "|")
    for r in rows:
        print(f"| {r['setting']} | " + " | ".join(str(r[c]) for c in cols)
              + f" | {r['feedback_sent']} |")
    return 0


def export_pairs(url: str, prefix: str, artifact_dir: Path, catalog: Path, out: Path) -> None:
    """``sku-feedback export`` of one setting's feedback (its key prefix, the default gate)."""
    from index_builder.feedback_cli import export

    s = IndexBuilderSettings(redis_url=url, key_prefix=prefix, artifact_dir=artifact_dir,
                             feedback=POLICIES["gate"])
    summary = export(s, catalog, out)
    print(f"exported {summary['pairs']} pairs of {summary['skus']} SKUs to {out}", flush=True)


def torch_threads(n: int) -> None:
    import torch

    torch.set_num_threads(n)


if __name__ == "__main__":
    raise SystemExit(main())
