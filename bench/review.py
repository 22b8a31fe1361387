"""Review-flag benchmark: do the review verdicts find the bad registrations of a corruption suite?

    .venv/bin/python bench/review.py [--out bench/out/review] [--scale 1.0] [--kinds a,b] [--signals]

Builds the corruption suite of ``bench/review_cases.py`` (synthetic scans whose truth is known,
failing the way real scans do: left/right landmark swaps, a limb cut off, arms fused to the
torso, crossed or sitting poses, fists, heavy noise and holes, loose clothing, a pole, stool or
second person in the scan), writes each as a point-cloud PLY with its ``landmarks.json``
(truth-derived landmarks with the landmark stage's measured noise, see review_cases.py), runs
the real register stage (``run_registration``) and the review (``review_scan``) on it, and scores
the registration against its truth (surface vertices, mean and p95 mm).

A registration is **bad** when its true p95 error is > 10 mm. It is **flagged** when its verdict
is ``look`` or ``failed``, or when the register stage itself refused it (RegistrationError).
Prints one row per case and the table per kind, then recall (bad ones flagged) and the
false-flag rate (good ones flagged), and the same for the peer: what flagged scans before the
review (the register stage's refusals and metrics.json's scan->registration p95). Registrations are cached in OUT/<case>/ (``metrics.json``
present = done), so re-running after changing thresholds only re-reviews (~1 s a scan);
``--rereg`` redoes them. ``--signals`` also prints every signal against the truth error, for
calibrating the thresholds (docs/review.md).

``--work W [--rereview]`` scores real pipeline output instead: the verdicts ``ghum-pipe run``
wrote into W (real MediaPipe landmarks, meshed scans) against the truth ``ghum-pipe synth`` wrote
beside its scans; ``--rereview`` reviews each registration again with today's rules first.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np


BAD_P95_MM = 10.0


def case_list(scale: float, kinds: list[str] | None) -> list[tuple[str, int]]:
    """(kind, index) interleaved across kinds, so a partial run has some of every kind."""
    from ghum_pipe.synth.corruptions import COUNTS

    counts = {k: max(1, int(round(n * scale))) for k, n in COUNTS.items() if not kinds or k in kinds}
    return [(k, i) for i in range(max(counts.values())) for k, n in counts.items() if i < n]


def register_case(t, tl, kind: str, index: int, out: Path, rereg: bool, seed: int) -> dict:
    from ghum_pipe.synth.corruptions import make_case, write_case

    from ghum_pipe.errors import GhumPipeError
    from ghum_pipe.register.stage import RegisterConfig, run_registration

    d = out / f"{kind}-{index}"
    scan_path = d / "scan.ply"
    record = d / "bench.json"
    if record.exists() and not rereg:
        return json.loads(record.read_text())
    t0 = time.perf_counter()
    if not scan_path.exists() or not (d / "truth.npz").exists():
        write_case(make_case(t, tl, kind, index, seed), d)
    t_gen = time.perf_counter() - t0
    t0 = time.perf_counter()
    row = dict(case=f"{kind}-{index}", kind=kind, t_gen=t_gen)
    (d / "metrics.json").unlink(missing_ok=True)
    try:
        run_registration(scan_path, d, RegisterConfig(units="m", up="+z", kind="body"))
    except GhumPipeError as e:
        row["register_error"] = str(e).splitlines()[0]
    row["t_reg"] = time.perf_counter() - t0
    from ghum_pipe.io.atomic import write_json

    write_json(record, row)
    return row


def score_case(t, row: dict, out: Path) -> dict:
    """Review the cached registration and score it against its truth."""
    from ghum_pipe.register.evaluate import surface_error_mm
    from ghum_pipe.review import review_scan

    d = out / row["case"]
    row = dict(row)
    if "register_error" in row:
        row.update(verdict="failed", reasons=["register: " + row["register_error"]])
        return row
    truth = np.load(d / "truth.npz")["verts_m"]
    reg = np.load(d / "params.npz")["verts_internal"]
    row["err"], row["p95"] = surface_error_mm(t, reg, truth)
    t0 = time.perf_counter()
    review = review_scan(d, d / "scan.ply")
    row["t_review"] = time.perf_counter() - t0
    row.update(verdict=review.verdict, reasons=list(review.reasons), signals=dict(review.signals))
    return row


def score_work(t, work: Path, rereview: bool = False) -> list[dict]:
    """The verdicts that ``ghum-pipe run`` wrote into WORK (real MediaPipe landmarks, the whole
    pipeline), scored against the truth ``ghum-pipe synth`` wrote beside the scans
    (``<scans>/../truth/<id>.npz``). Body scans only: a close-up's truth is the whole body.
    ``rereview``: review each registration again with today's rules (rewrites its metrics.json)."""
    from ghum_pipe.review import review_scan

    import trimesh

    from ghum_pipe.io.scan import load_scan
    from ghum_pipe.pipelines.manifest import Manifest
    from ghum_pipe.register.evaluate import surface_error_mm

    manifest = Manifest.load_existing(work)
    rows = []
    for sid in manifest.ids():
        path = Path(manifest.scans[sid]["path"])
        truth_path = path.parent.parent / "truth" / f"{path.stem}.npz"
        if "-head" in sid or "-hand" in sid or not truth_path.exists():
            continue
        kind = "posed" if json.loads(truth_path.with_suffix(".json").read_text()).get("posed") else "apose"
        row = dict(case=sid, kind=f"real_{kind}", t_gen=0.0, t_reg=0.0)
        d = work / "scans" / sid
        failed = [r.get("error") for r in (manifest.stage(sid, s) for s in ("landmark", "register"))
                  if r and r.get("status") == "failed"]
        if failed or not (d / "metrics.json").exists():
            row.update(verdict="failed", reasons=[f"refused: {failed[0] if failed else 'not registered'}"],
                       register_error=failed[0] if failed else "not registered")
            rows.append(row)
            continue
        scan = load_scan(path)
        reg = scan.frame.to_internal(trimesh.load(d / "registration.ply", process=False).vertices)
        truth = scan.frame.to_internal(np.load(truth_path)["verts"])
        row["err"], row["p95"] = surface_error_mm(t, reg, truth)
        if rereview:
            review_scan(d, path, template=t, scan=scan)
        review = json.loads((d / "metrics.json").read_text()).get("review", {})
        row.update(verdict=review.get("verdict", "ok"), reasons=list(review.get("reasons", [])),
                   signals=dict(review.get("signals", {})))
        rows.append(row)
    return rows


def print_table(rows: list[dict], show_signals: bool) -> None:
    from ghum_pipe.review import DEFAULT_RULES

    print(f"\n{'case':>18} {'err mm':>7} {'p95 mm':>7} {'bad':>4} {'verdict':>7}  reasons")
    for r in rows:
        p95 = r.get("p95")
        bad = "-" if p95 is None else ("yes" if p95 > BAD_P95_MM else "no")
        err = f"{r['err']:7.2f} {p95:7.2f}" if p95 is not None else f"{'-':>7} {'-':>7}"
        print(f"{r['case']:>18} {err} {bad:>4} {r['verdict']:>7}  {'; '.join(r['reasons'])[:150]}")
    if show_signals:
        names = sorted({k for r in rows for k in r.get("signals", {})})
        print("\nsignals (case, p95 mm, then each signal)")
        print("case,p95," + ",".join(names))
        for r in rows:
            s = r.get("signals", {})
            vals = ",".join("" if s.get(n) is None else f"{s[n]:.4g}" for n in names)
            print(f"{r['case']},{r.get('p95', float('nan')):.2f},{vals}")
    # per kind, then the totals
    print(f"\n{'kind':>15} {'n':>3} {'bad':>4} {'bad flagged':>11} {'good':>5} {'good flagged':>12} {'refused':>8}")
    kinds = list(dict.fromkeys(r["kind"] for r in rows))
    tot = dict(n=0, bad=0, bad_flag=0, good=0, good_flag=0, refused=0)
    for k in kinds + ["all"]:
        rs = [r for r in rows if k == "all" or r["kind"] == k]
        c = dict(n=len(rs), refused=sum("register_error" in r for r in rs))
        bad = [r for r in rs if "p95" in r and r["p95"] > BAD_P95_MM]
        good = [r for r in rs if "p95" in r and r["p95"] <= BAD_P95_MM]
        c.update(bad=len(bad), bad_flag=sum(r["verdict"] != "ok" for r in bad), good=len(good),
                 good_flag=sum(r["verdict"] != "ok" for r in good))
        if k != "all":
            for key in tot:
                tot[key] += c[key]
        print(f"{k:>15} {c['n']:>3} {c['bad']:>4} {c['bad_flag']:>11} {c['good']:>5} {c['good_flag']:>12} {c['refused']:>8}")
    # the peer: what the pipeline flagged before the review (the register stage's refusals and
    # its scan->registration distance in metrics.json), at the review's own look bound
    bound = next(r.look for r in DEFAULT_RULES if r.signal == "s2r_p95_mm")
    scored = [r for r in rows if "p95" in r]
    peer_flag = lambda r: r["signals"].get("s2r_p95_mm", 0.0) > bound  # noqa: E731
    pb = [r for r in scored if r["p95"] > BAD_P95_MM]
    pg = [r for r in scored if r["p95"] <= BAD_P95_MM]
    print(f"peer (register's refusals + scan->registration p95 > {bound:g} mm only): recall "
          f"{100 * sum(map(peer_flag, pb)) / max(len(pb), 1):.1f} % ({sum(map(peer_flag, pb))}/{len(pb)}), "
          f"false-flag rate {100 * sum(map(peer_flag, pg)) / max(len(pg), 1):.1f} % ({sum(map(peer_flag, pg))}/{len(pg)})")
    recall = tot["bad_flag"] / tot["bad"] if tot["bad"] else float("nan")
    ffr = tot["good_flag"] / tot["good"] if tot["good"] else float("nan")
    print(f"\nbad = true p95 > {BAD_P95_MM:.0f} mm over surface vertices; refused = the register stage raised "
          f"(counted as flagged, no truth error)")
    print(f"recall {100 * recall:.1f} % ({tot['bad_flag']}/{tot['bad']}), false-flag rate {100 * ffr:.1f} % "
          f"({tot['good_flag']}/{tot['good']}); target: recall >= 95 % at false flags <= 5 %")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "out" / "review")
    ap.add_argument("--seed", type=int, default=None,
                    help="another draw of the suite (held-out check of the bounds); cached in OUT-seed<N>")
    ap.add_argument("--scale", type=float, default=1.0, help="multiply every kind's case count (at least 1 each)")
    ap.add_argument("--kinds", default="", help="comma-separated kinds to run (default: all)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads")
    ap.add_argument("--rereg", action="store_true", help="re-register cached cases")
    ap.add_argument("--rereview", action="store_true", help="with --work: review again with today's rules")
    ap.add_argument("--no-register", action="store_true", help="only review cases already registered")
    ap.add_argument("--shard", default="0/1", help="i/n: this process takes every n-th case from the i-th")
    ap.add_argument("--register-only", action="store_true", help="fill the cache, do not review")
    ap.add_argument("--signals", action="store_true", help="print every signal per case (calibration)")
    ap.add_argument("--work", type=Path, default=None,
                    help="instead of the suite: score the verdicts 'ghum-pipe run' wrote into this work dir "
                         "(real MediaPipe landmarks) against the truth 'ghum-pipe synth' wrote beside its scans")
    args = ap.parse_args()
    if args.work is not None:
        from ghum_pipe.template import load_template

        print_table(score_work(load_template(), args.work, args.rereview), args.signals)
        return

    import torch

    torch.set_num_threads(args.threads)
    from ghum_pipe.register.landmark_pairs import load_template_landmark_set
    from ghum_pipe.template import load_template

    from ghum_pipe.synth.corruptions import SEED

    seed = SEED if args.seed is None else args.seed
    if seed != SEED:
        args.out = args.out.with_name(f"{args.out.name}-seed{seed}")
    t = load_template()
    tl = load_template_landmark_set(t)
    rows = []
    shard, n_shards = (int(x) for x in args.shard.split("/"))
    for kind, i in case_list(args.scale, [k for k in args.kinds.split(",") if k])[shard::n_shards]:
        d = args.out / f"{kind}-{i}"
        if args.no_register and not (d / "bench.json").exists():
            continue
        row = register_case(t, tl, kind, i, args.out, args.rereg, seed)
        if args.register_only:
            print(row, flush=True)
            continue
        row = score_case(t, row, args.out)
        rows.append(row)
        print(f"{row['case']}: gen {row['t_gen']:.0f} s, reg {row['t_reg']:.0f} s, p95 {row.get('p95', float('nan')):.1f} mm, "
              f"{row['verdict']} {row['reasons'][:3]}", flush=True)
    print_table(rows, args.signals)


if __name__ == "__main__":
    main()
