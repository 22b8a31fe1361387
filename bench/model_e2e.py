"""Scans to model, end to end, against the truth (``make model-e2e``).

    .venv/bin/python bench/model_e2e.py OUT [--scan-subjects 6] [--population 500] [--skip-scans]

Three parts, one run, each with its wall time:

1. **Population**: how far the synthetic people's rest shapes lie from the template's shape
   space: RMS residual (mm, surface vertices) of their best projection onto the template's
   mean + 32 coefficients, for the ``anny`` population (Anny's full phenotype model + soft
   tissue and asymmetry), Anny's phenotype model alone (``variation`` 0) and the old
   ``template`` population (in the basis by construction).
2. **Shape spaces** on a large population drawn from the same generator as
   ``ghum-pipe synth --registrations`` (subject s of seed S: ``default_rng([S, s, 4])``; the
   rest shapes are taken directly, not re-estimated from posed registrations, whose training
   at this size is beyond this machine; see docs/model.md): held-out mean vertex error (mm) of
   the template's 32-coefficient space, PCA-k of the training shapes, the k-d VAE, and PCA on
   the template's prior (the trained models' linear path), at k = 4, 8, 16, 32, 64, with
   ``--few`` (32) and ``--population`` training subjects.
3. **Scan route**: ``--scan-subjects`` synthetic subjects, each scanned in the A-pose, in
   ``--takes`` - 1 random poses (with expressions) and as head and left-hand close-ups
   (``--closeups``) -> ``ghum-pipe run`` (landmark -> register) -> ``ghum-pipe train`` ->
   ``ghum-pipe evaluate --truth`` on the held-out subjects' scans; beside it, the same training
   from the ground-truth registrations of the same scans (truth vertices, pose, the scanner's
   observed-vertex mask as F). Both models are evaluated on the same held-out pipeline
   registrations against the truth: the difference is what registration error costs. The
   people carry the planted corrective, skinning and joint shifts (``synth --planted``), so the
   planted-truth checks run on models trained from the pipeline's registrations, over
   ``--splits`` held-out splits (``train --seed``).
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

PY = [sys.executable, "-m", "ghum_pipe.cli"]


def rest_population(t, seed: int, count: int, variation: float = 1.0, population: str = "anny") -> np.ndarray:
    """(count, V, 3) rest shapes of subjects 0..count-1 as ``synth --registrations`` draws them."""
    from ghum_pipe.synth.population import draw_person

    if population == "template":
        rng = np.random.default_rng(seed)
        bank = rng.choice(np.arange(1, len(t.phenotype_bank)), size=count, replace=count > len(t.phenotype_bank) - 1)
        return t.rest_verts + np.einsum("ns,svc->nvc", t.phenotype_bank_betas[bank], t.shape_basis)
    return np.stack([draw_person(t, np.random.default_rng([seed, s, 4]), variation).verts for s in range(count)])


def population_table(t, n: int, seed: int) -> list[tuple]:
    from ghum_pipe.synth.population import template_residual_mm

    surface = t.masks["surface"]
    body = surface & (np.asarray(t.vertex_part_labels) == 0)
    rows = []
    for name, kw in (("anny (default): Anny full phenotype + soft tissue/asymmetry", {}),
                     ("Anny full phenotype model only (variation 0)", dict(variation=0.0)),
                     ("template (old): bank phenotype, 32 coefficients", dict(population="template"))):
        shapes = rest_population(t, seed, n, **kw)
        rows.append((name, n, template_residual_mm(t, shapes, surface), template_residual_mm(t, shapes, body)))
    return rows


def draw_population(t, seed: int, count: int, cache: Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(count, V, 3) float32 rest shapes and (count, 15) generator codes (phenotype, latent
    factors) of subjects 0..count-1, as ``rest_population`` draws them; cached in ``cache``."""
    from ghum_pipe.synth.population import draw_person

    if cache is not None and cache.is_file():
        with np.load(cache) as z:
            if len(z["shapes"]) >= count:
                return z["shapes"][:count], z["codes"][:count]
    people = [draw_person(t, np.random.default_rng([seed, s, 4])) for s in range(count)]
    shapes = np.stack([p.verts for p in people]).astype(np.float32)
    codes = np.stack([np.r_[p.phenotype, p.factors] for p in people]).astype(np.float32)
    if cache is not None:
        np.savez(cache, shapes=shapes, codes=codes)
    return shapes, codes


def pca_curve_mm(train: np.ndarray, test: np.ndarray, ks) -> dict:
    """{k: (held-out, training) mean vertex error (mm)} of PCA-k of ``train`` (S, V, 3)."""
    X = torch.as_tensor(train.reshape(len(train), -1), dtype=torch.float64)
    mean = X.mean(0)
    _, S, Vt = torch.linalg.svd(X - mean, full_matrices=False)
    Y = torch.as_tensor(test.reshape(len(test), -1), dtype=torch.float64) - mean
    C = Y @ Vt.T
    Ct = (X - mean) @ Vt.T
    out = {}
    for k in ks:
        rec, rec_t = C[:, :k] @ Vt[:k], Ct[:, :k] @ Vt[:k]
        out[k] = (float((rec - Y).reshape(len(Y), -1, 3).norm(dim=-1).mean() * 1000),
                  float((rec_t - (X - mean)).reshape(len(X), -1, 3).norm(dim=-1).mean() * 1000))
    return out


def vae_diagnosis(train: np.ndarray, test: np.ndarray, codes_train: np.ndarray, codes_test: np.ndarray,
                  dim: int, steps_list, seed: int = 0) -> list[tuple]:
    """Why the k-d VAE does (not) beat PCA-k: (variant, training mm, held-out mm, seconds) of

    - the VAE as ``fit_vae`` trains it (Adam lr 3e-4, full batch up to 4,096 rows), at each of ``steps_list``;
    - the same VAE with Adam lr 1e-3 decayed to 0 (cosine), and with the step kept that is best
      on 10 % of the training subjects held back (is it under-trained? over-fitted?);
    - the same architecture without sampling noise and KL (a plain auto-encoder: does the
      VAE's noise hold it back?);
    - the generator's own codes (11 phenotype values + 4 latent factors, standardised, padded
      to ``dim``: an oracle encoder) through a linear map and through the VAE's decoder: can a
      decoder of this size represent the population with ``dim`` numbers at all?"""
    from ghum_pipe.model.networks import VAE
    from ghum_pipe.model.train import fit_vae

    f = lambda a: torch.as_tensor(a.reshape(len(a), -1), dtype=torch.float32)  # noqa: E731
    mean = f(train).mean(0)
    x, y = f(train) - mean, f(test) - mean
    err = lambda rec, target: float((rec - target).reshape(len(target), -1, 3).norm(dim=-1).mean() * 1000)  # noqa: E731
    rows = []

    def row(name, vae, t0, z_train=None, z_test=None):
        with torch.no_grad():
            zt = vae.encode(x)[0] if z_train is None else z_train
            zs = vae.encode(y)[0] if z_test is None else z_test
            rows.append((name, err(vae.decode(zt), x), err(vae.decode(zs), y), time.time() - t0))

    def fresh():
        torch.manual_seed(dim)
        vae = VAE(x.shape[1], dim)
        vae.init_pca(x)
        return vae

    for steps in steps_list:
        torch.manual_seed(dim)
        vae, t0 = VAE(x.shape[1], dim), time.time()
        fit_vae(vae, x, steps, 1e-3, seed=dim)
        row(f"VAE, fit_vae (lr 3e-4), {steps} steps", vae, t0)
    steps = steps_list[-1]
    for val in (0.0, 0.1):
        vae, t0 = fresh(), time.time()
        _train_variant(vae, x, steps, sample=True, kl=1e-3, val=val, seed=dim)
        row(f"VAE, lr 1e-3 cosine, {steps} steps" + (", best step on 10 % held back" if val else ""), vae, t0)
    vae, t0 = fresh(), time.time()
    _train_variant(vae, x, steps, sample=False, kl=0.0, val=0.0, seed=dim)
    row(f"auto-encoder (no noise, no KL), lr 1e-3 cosine, {steps} steps", vae, t0)
    # oracle codes through the decoder
    ct, cs = torch.as_tensor(codes_train), torch.as_tensor(codes_test)
    mu, sd = ct.mean(0), ct.std(0).clamp_min(1e-6)
    pad = lambda c: torch.nn.functional.pad((c - mu) / sd, (0, max(0, dim - c.shape[1])))[:, :dim]  # noqa: E731
    zt, zs = pad(ct), pad(cs)
    vae, t0 = fresh(), time.time()
    with torch.no_grad():  # the linear path: least squares from the codes to the PCA coefficients
        W = torch.linalg.lstsq(zt, vae.coefficients(x), driver="gelsd").solution
        vae.dec_lin.weight.copy_(W.T)
    row(f"linear map from the generator's {codes_train.shape[1]} codes (oracle)", vae, t0, zt, zs)
    t0 = time.time()
    _train_variant(vae, x, steps, sample=False, kl=0.0, val=0.0, seed=dim, codes=zt)
    row(f"VAE decoder fed the generator's {codes_train.shape[1]} codes (oracle), {steps} steps", vae, t0, zt, zs)
    return rows


def _train_variant(vae, x: torch.Tensor, steps: int, sample: bool, kl: float, val: float, seed: int,
                   codes: torch.Tensor | None = None) -> None:
    """Adam (lr 1e-3, cosine to 0), full batch, squared coefficient error (cm^2) + ``kl`` * KL;
    ``val`` > 0: keep the step best on that fraction of x held back; ``codes``: train only the
    decoder, fed these latents (oracle)."""
    with torch.no_grad():
        c = vae.coefficients(x)
    idx = torch.randperm(len(c), generator=torch.Generator().manual_seed(seed))
    nv = int(val * len(c))
    tr, va = idx[nv:], idx[:nv]
    params = [p for p in vae.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=1e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    best = None
    flush = torch.set_flush_denormal(True)
    try:
        for i in range(steps + 1):
            if nv and (i % 50 == 0 or i == steps):
                with torch.no_grad():
                    e = float(vae.reconstruction_m2(vae(c[va], sample=False, is_coefficients=True)[0], c[va]))
                if best is None or e < best[0]:
                    best = (e, {k: v.clone() for k, v in vae.state_dict().items()})
            if i == steps:
                break
            opt.zero_grad()
            if codes is None:
                c_hat, _, mu, logvar = vae(c[tr], sample=sample, is_coefficients=True)
                loss = vae.reconstruction_m2(c_hat, c[tr]) * 1e4 + kl * vae.kl(mu, logvar)
            else:
                loss = vae.reconstruction_m2(vae.decode_coefficients(codes[tr]), c[tr]) * 1e4
            loss.backward()
            opt.step()
            sched.step()
    finally:
        if flush:
            torch.set_flush_denormal(False)
    if best is not None:
        vae.load_state_dict(best[1])


def shape_space_table(t, train: np.ndarray, test: np.ndarray, dims, vae_steps: int, prior_subjects: float) -> list[dict]:
    from ghum_pipe.model.evaluate import vae_vs_pca

    f = lambda a: torch.as_tensor(a, dtype=torch.float32)  # noqa: E731
    return vae_vs_pca(f(train), f(test), dims, vae_steps, template_mean=f(t.rest_verts),
                      template_basis=f(t.shape_basis), prior_subjects=prior_subjects)


# ----------------------------------------------------------------------------- scan route
def make_scans(out: Path, n: int, seed: int, takes: int, closeups: bool, jobs: int) -> list[str]:
    """Synthetic scans (A-pose take 0, posed takes 1.., close-ups) of people carrying the planted
    corrective, skinning and joint shifts (``SynthConfig.planted``) and their truth in ``out``."""
    from concurrent.futures import ProcessPoolExecutor

    from ghum_pipe.synth.generate import write_batch_planted_truth
    from ghum_pipe.template import load_template

    write_batch_planted_truth(out, load_template(), seed)
    with ProcessPoolExecutor(jobs) as pool:
        ids = sum(pool.map(_subject_scans, [(out, seed, i, takes, closeups) for i in range(n)]), [])
    return ids


def _subject_scans(job) -> list[str]:
    from ghum_pipe.synth.generate import SynthConfig, body_scan, closeup_scans, subject_id
    from ghum_pipe.synth.writers import write_scan
    from ghum_pipe.template import load_template

    torch.set_num_threads(1)
    out, seed, i, takes, closeups = job
    t = load_template()
    sid = subject_id(seed, i)
    ids = [sid if k == 0 else f"{sid}-t{k}" for k in range(takes)]
    done = lambda scan_id: (out / "scans" / f"{scan_id}.ply").exists() and (out / "truth" / f"{scan_id}.npz").exists()  # noqa: E731
    for k, scan_id in enumerate(ids):
        if not done(scan_id):
            write_scan(out, body_scan(t, seed, i, SynthConfig(expressions=k > 0, planted=True), take=k), "ply")
    if closeups:
        kinds = [k for k in ("head", "hand_left") if not done(f"{sid}-{k}")]
        for s in closeup_scans(t, seed, i, SynthConfig(expressions=True, planted=True), kinds=kinds) if kinds else []:
            write_scan(out, s, "ply")
        ids += [f"{sid}-head", f"{sid}-hand_left"]
    return ids


def write_subjects_csv(work: Path, truth_dir: Path, ids) -> None:
    work.mkdir(parents=True, exist_ok=True)
    with open(work / "subjects.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["scan_id", "subject"])
        for sid in ids:
            with np.load(truth_dir / f"{sid}.npz") as z:
                w.writerow([sid, str(z["subject"])])


def write_truth_registrations(work: Path, truth_dir: Path, ids) -> None:
    """Ground-truth registrations of the same scans: truth vertices (internal metres), the
    true pose with the placement's rotation as the root rotation and its translation, F = the
    vertices the scanner saw (within a close-up's region)."""
    import trimesh
    from scipy.spatial.transform import Rotation

    from ghum_pipe.io.atomic import write_npz
    from ghum_pipe.template import load_template

    t = load_template()
    for sid in ids:
        with np.load(truth_dir / f"{sid}.npz") as z:
            tr = {k: z[k] for k in z.files}
        d = work / "scans" / sid
        d.mkdir(parents=True, exist_ok=True)
        # verts_m = R v + c where v is posed about the root joint: root rotation R, translation
        # c + R r - r with r the (posed) root joint (the truth's joints_m give R r + c directly)
        pose = tr["pose"].copy()
        from ghum_pipe.synth.generate import planted, pose_rest

        seed = int(json.loads((truth_dir / f"{sid}.json").read_text())["seed"])
        v0, j0 = pose_rest(t, tr["rest_verts"], tr["rest_joints"], pose, tr["expression"], planted(t, seed))
        A = np.c_[v0, np.ones(len(v0))]
        M = np.linalg.lstsq(A, tr["verts_m"], rcond=None)[0]  # exact rigid map v0 -> verts_m
        R = M[:3].T
        pose[0] = Rotation.from_matrix(R).as_rotvec()
        trans = tr["verts_m"][0] - R @ (v0[0] - j0[0]) - j0[0]
        mask = tr["observed"].astype(bool) & t.masks["surface"]
        if "region_mask" in tr:
            mask &= tr["region_mask"].astype(bool)
        trimesh.Trimesh(tr["verts_m"], t.faces, process=False).export(d / "registration.ply")
        write_npz(d / "params.npz", pose=pose.astype(np.float32), translation=trans, verts_internal=tr["verts_m"],
                  subject=tr["subject"], kind=tr["kind"], vertex_mask=mask)


def run(cmd: list, log: Path) -> float:
    t0 = time.time()
    with open(log, "a") as f:
        f.write("$ " + " ".join(map(str, cmd)) + "\n")
        f.flush()
        res = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT)
    if res.returncode != 0:
        print(f"command failed (exit {res.returncode}), see {log}: {' '.join(map(str, cmd))}")
    return time.time() - t0


def scan_route(args, times: dict) -> dict:
    out = args.out / "scans_route"
    (out / "synth").mkdir(parents=True, exist_ok=True)
    log = args.out / "commands.log"
    t0 = time.time()
    ids = make_scans(out / "synth", args.scan_subjects, args.seed, args.takes, args.closeups, args.workers)
    times["synth scans"] = time.time() - t0
    truth_dir = out / "synth" / "truth"
    W, G = out / "W", out / "W_truth"
    write_subjects_csv(W, truth_dir, ids)
    times["ghum-pipe run (landmark + register)"] = run(
        PY + ["run", *[str(out / "synth" / "scans" / f"{i}.ply") for i in ids], "--work", str(W), "--workers",
              str(args.workers), "-q"], log)
    t0 = time.time()
    write_truth_registrations(G, truth_dir, [i for i in ids if (W / "scans" / i / "registration.ply").is_file()])
    write_subjects_csv(G, truth_dir, [i for i in ids if (W / "scans" / i / "registration.ply").is_file()])
    times["ground-truth registrations"] = time.time() - t0
    train = ["--rounds", str(args.rounds), "--holdout", str(args.holdout), "--workers", str(args.workers), "-q"]
    trained = lambda m: (m / "training.json").is_file()  # noqa: E731  (a resumed run keeps finished models)
    if not trained(out / "M"):
        times["train from pipeline registrations"] = run(PY + ["train", "--work", str(W), "--out", str(out / "M")] + train, log)
    if not trained(out / "M_truth"):
        times["train from ground-truth registrations"] = run(
            PY + ["train", "--work", str(G), "--out", str(out / "M_truth")] + train, log)
    res = {}
    for name, model in (("pipeline", out / "M"), ("truth", out / "M_truth")):
        if (out / f"eval_{name}" / "results.json").is_file():
            res[name] = json.loads((out / f"eval_{name}" / "results.json").read_text())
            continue
        t0 = time.time()
        run(PY + ["evaluate", "--model", str(model), "--work", str(W), "--truth", str(truth_dir), "--out",
                  str(out / f"eval_{name}"), "--max-scans", str(args.max_scans), "--fit-iters", str(args.fit_iters), "-q"]
            + (["--no-curve"] if name == "truth" else []), log)
        times[f"evaluate ({name}-trained)"] = time.time() - t0
        path = out / f"eval_{name}" / "results.json"
        res[name] = json.loads(path.read_text()) if path.is_file() else None
    reg = []
    for sid in ids:
        m = W / "scans" / sid / "params.npz"
        if m.is_file():
            with np.load(m) as z, np.load(truth_dir / f"{sid}.npz") as tz:
                from ghum_pipe.model.truth import scan_truth
                from ghum_pipe.template import load_template

                st = scan_truth(truth_dir, W, [sid], load_template().masks["surface"])
                e = np.linalg.norm(z["verts_internal"] - st.verts[0], axis=-1)
                reg.append((sid, str(tz["kind"]), float(e[st.mask[0]].mean() * 1000)))
    res["registration_error"] = reg
    # more held-out splits of the same registrations (train --seed): the planted-truth checks' spread
    res["splits"] = [_checks(res.get("pipeline"))]
    from ghum_pipe.model.report import run_planted_checks

    for k in range(1, args.splits):
        m = out / f"M_split{k}"
        if not trained(m):
            times[f"train, split {k} (train --seed {k})"] = run(
                PY + ["train", "--work", str(W), "--out", str(m), "--seed", str(k)] + train, log)
        if trained(m):  # the checks need no fits: computed here
            res["splits"].append(_checks(run_planted_checks(m, W, truth_dir, args.max_scans)))
    res["n_scans"] = len(ids)
    return res


def _checks(res: dict | None) -> dict:
    """{check name: value} of one evaluation's planted-truth checks, plus its held-out subjects."""
    if not res:
        return {}
    return {**{c["name"]: c["value"] for c in res.get("checks", [])}, "heldout": ",".join(res.get("subjects", []))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", type=Path)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--residual-subjects", type=int, default=40, help="people in the population table")
    ap.add_argument("--population", type=int, default=500, help="training subjects of the large shape-space run")
    ap.add_argument("--few", type=int, default=32, help="training subjects of the small shape-space run")
    ap.add_argument("--test", type=int, default=100, help="held-out subjects of the shape-space runs")
    ap.add_argument("--dims", type=int, nargs="+", default=[4, 8, 16, 32, 64])
    ap.add_argument("--vae-steps", type=int, default=600)
    ap.add_argument("--prior-subjects", type=float, default=32.0)
    ap.add_argument("--shapes-cache", type=Path, default=None, help="npz caching the drawn population")
    ap.add_argument("--diagnose", type=int, nargs="*", default=[], help="latent sizes of the VAE diagnosis")
    ap.add_argument("--diagnose-steps", type=int, nargs="+", default=[600, 3000])
    ap.add_argument("--skip-scans", action="store_true", help="only the population and shape-space parts")
    ap.add_argument("--skip-shapes", action="store_true", help="only the scan route")
    ap.add_argument("--scan-subjects", type=int, default=6)
    ap.add_argument("--takes", type=int, default=2, help="body scans per subject (A-pose + takes - 1 posed)")
    ap.add_argument("--closeups", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--holdout", type=float, default=0.34)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--max-scans", type=int, default=12)
    ap.add_argument("--fit-iters", type=int, default=60)
    ap.add_argument("--splits", type=int, default=3, help="held-out splits of the scan route (train --seed 0..)")
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(1)
    from ghum_pipe.template import load_template

    args.out.mkdir(parents=True, exist_ok=True)
    t = load_template()
    times: dict = {}
    results: dict = dict(args={k: str(v) for k, v in vars(args).items()})
    if not args.skip_shapes:
        results.update(shape_part(t, args, times))
    if not args.skip_scans:
        route = scan_route(args, times)
        results["scan_route"] = route
        print_scan_route(route)
    print("\n## Time per phase\n| phase | seconds |\n|---|---|")
    for k, v in times.items():
        print(f"| {k} | {v:.0f} |")
    (args.out / "results.json").write_text(json.dumps(results, indent=1, default=float))


def shape_part(t, args, times: dict) -> dict:
    t0 = time.time()
    pop = population_table(t, args.residual_subjects, args.seed)
    times["population residuals"] = time.time() - t0
    print("\n## Population: distance of the truth's rest shapes from the template's shape space")
    print("| population | subjects | RMS residual, surface (mm) | trunk and limbs (mm) |\n|---|---|---|---|")
    for r in pop:
        print(f"| {r[0]} | {r[1]} | {r[2]:.2f} | {r[3]:.2f} |")
    t0 = time.time()
    shapes, codes = draw_population(t, args.seed + 1, args.population + args.test, args.shapes_cache)
    times[f"draw {args.population + args.test} people"] = time.time() - t0
    test = shapes[args.population:]
    results = {}
    if args.diagnose:
        results.update(diagnose(t, shapes, codes, args, times))
    space = {}
    for n in sorted({args.few, args.population}):
        t0 = time.time()
        space[n] = shape_space_table(t, shapes[:n], test, args.dims, args.vae_steps, args.prior_subjects)
        times[f"shape spaces, {n} training subjects"] = time.time() - t0
    print(f"\n## Shape spaces: held-out mean vertex error (mm), {args.test} held-out subjects")
    print("| training subjects | k | template 32 | PCA-k | VAE-k | PCA-k on the template prior | VAE-k on the prior |\n"
          "|---|---|---|---|---|---|---|")
    for n, rows in space.items():
        for r in rows:
            print(f"| {n} | {r['dim']} | {r['template_mm']:.2f} | {r['pca_mm']:.2f} | {r['vae_mm']:.2f} | "
                  f"{r['prior_pca_mm']:.2f} | {r['prior_vae_mm']:.2f} |")
    return dict(population=pop, shape_spaces=space, **results)


def diagnose(t, shapes, codes, args, times: dict) -> dict:
    """The evidence behind the shape-space table: the PCA curve of the population (how many
    linear directions reach the template's 32) and the VAE diagnosis at ``--diagnose`` dims."""
    from ghum_pipe.model.baselines import template_projection_error_mm

    n = args.population
    train, test = shapes[:n], shapes[n:]
    tpl = template_projection_error_mm(torch.as_tensor(t.shape_basis, dtype=torch.float32),
                                       torch.as_tensor(test) - torch.as_tensor(t.rest_verts, dtype=torch.float32))
    t0 = time.time()
    ks = [k for k in (1, 2, 4, 8, 12, 16, 20, 24, 28, 32, 48, 64, 96, 128) if k < n]
    curve = pca_curve_mm(train, test, ks)
    times["PCA curve"] = time.time() - t0
    print(f"\n## PCA of the population ({n} training, {len(test)} held-out subjects; template 32: {tpl:.2f} mm)")
    print("| k | held-out PCA-k (mm) | training PCA-k (mm) |\n|---|---|---|")
    for k, (mm, tr) in curve.items():
        print(f"| {k} | {mm:.2f} | {tr:.2f} |")
    rows = {}
    for dim in args.diagnose:
        t0 = time.time()
        rows[dim] = vae_diagnosis(train, test, codes[:n], codes[n:], dim, args.diagnose_steps)
        times[f"VAE diagnosis, k = {dim}"] = time.time() - t0
        pk = pca_curve_mm(train, test, [dim])[dim]
        print(f"\n## VAE diagnosis, k = {dim} ({n} training subjects; PCA-{dim}: training {pk[1]:.2f} mm, "
              f"held out {pk[0]:.2f} mm; template 32 held out {tpl:.2f} mm)")
        print("| variant | training (mm) | held out (mm) | seconds |\n|---|---|---|---|")
        for r in rows[dim]:
            print(f"| {r[0]} | {r[1]:.2f} | {r[2]:.2f} | {r[3]:.0f} |")
    return dict(pca_curve={str(k): v for k, v in curve.items()}, template_mm=tpl,
                vae_diagnosis={str(k): v for k, v in rows.items()})


def print_scan_route(route: dict) -> None:
    reg = route["registration_error"]
    print(f"\n## Scan route: {route['n_scans']} scans, registration error to the truth (mm)")
    print("| kind | scans | mean | worst |\n|---|---|---|---|")
    for kind in sorted({r[1] for r in reg}):
        e = [r[2] for r in reg if r[1] == kind]
        print(f"| {kind} | {len(e)} | {np.mean(e):.2f} | {np.max(e):.2f} |")
    res_p, res_t = route.get("pipeline"), route.get("truth")
    if res_p is None:
        print("(evaluation of the pipeline-trained model failed)")
        return
    print(f"\n## Held-out fits ({res_p['n_scans']} scans of {len(res_p['subjects'])} subjects, pipeline registrations): "
          "error to the registration / to the truth (mm)")
    print("| model | trained on | latent | to registration | no PSD | to truth | no PSD |\n|---|---|---|---|---|---|---|")
    for tag, res in (("pipeline", res_p), ("ground truth", res_t)):
        for r in (res or {}).get("fit", []):
            print(f"| {r['model']} | {tag} | {r['latent']} | {r['mean_mm']:.2f} | {r.get('no_psd_mm', float('nan')):.2f} | "
                  f"{r.get('truth_mm', float('nan')):.2f} | {r.get('truth_no_psd_mm', float('nan')):.2f} |")
    splits = [s for s in route.get("splits", []) if s]
    if splits:
        names = [k for k in splits[0] if k != "heldout"]
        print(f"\n## Planted truth from the pipeline's registrations, {len(splits)} held-out split(s)")
        print("| check | " + " | ".join(f"split {i} ({s['heldout']})" for i, s in enumerate(splits)) + " | mean | spread (sd) |")
        print("|---|" + "---|" * (len(splits) + 2))
        for n in names:
            v = [s.get(n, float("nan")) for s in splits]
            print(f"| {n} | " + " | ".join(f"{x:.3f}" for x in v) + f" | {np.mean(v):.3f} | {np.std(v):.3f} |")
    for tag, res in (("pipeline", res_p), ("ground truth", res_t)):
        if res and res.get("checks"):
            print(f"\n| check ({tag}-trained, split 0) | value | target | ok |\n|---|---|---|---|")
            for c in res["checks"]:
                print(f"| {c['name']} | {c['value']:.3f} | {c['target']} | {'yes' if c['ok'] else 'NO'} |")
    if res_p.get("vae_vs_pca"):
        print("\n| k | VAE | PCA | PCA on template prior | VAE on the prior | template 32 |\n|---|---|---|---|---|---|")
        for r in res_p["vae_vs_pca"]:
            print(f"| {r['dim']} | {r['vae_mm']:.2f} | {r['pca_mm']:.2f} | {r.get('prior_pca_mm', float('nan')):.2f} | "
                  f"{r.get('prior_vae_mm', float('nan')):.2f} | {r.get('template_mm', float('nan')):.2f} |")


if __name__ == "__main__":
    main()
