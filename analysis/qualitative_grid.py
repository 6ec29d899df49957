"""The qualitative figure: per subject, its reference images, then the sampled images of every method
(rows) for a handful of prompts (columns), all at one sampling seed, from images already on disk.

Reads the sampling layout ``<samples>/<method>/<subject>/seed<train seed>/manifest.csv`` (written by
``dti sample``) and the subjects' reference folders ``<references>/<subject>/``. Writes one figure
per subject, ``qualitative_grid_<subject>`` (PNG, PDF, caption), and with ``--tables`` the images
shown, ``qualitative_grid.csv`` (subject, method, prompt_index, prompt, seed, file).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from analysis.common import save_figure, write_csv
from analysis.image_grid import image_grid
from analysis.labels import method_label, method_order
from dti.io import DTIError, check_name

COLUMNS = ["subject", "method", "prompt_index", "prompt", "seed", "file"]


def spread(indices, n: int) -> list[int]:
    """``n`` of ``indices`` evenly spread from the first to the last (all of them when there are fewer)."""
    indices = sorted(set(indices))
    if n <= 0:
        raise DTIError(f"the number of prompts must be at least 1, got {n}")
    picks = np.linspace(0, len(indices) - 1, min(n, len(indices))).round().astype(int)
    return [indices[i] for i in dict.fromkeys(picks.tolist())]


def manifest_path(samples: Path, method: str, subject: str, train_seed: int) -> Path:
    return Path(samples) / method / subject / f"seed{train_seed}" / "manifest.csv"


def _present(samples: Path, train_seed: int) -> tuple[list[str], list[str]]:
    """The methods with sampled images, and the subjects every one of them has."""
    methods = method_order(sorted(p.name for p in samples.iterdir() if p.is_dir()))
    subjects = None
    for method in methods:
        have = {p.parent.parent.name for p in (samples / method).glob(f"*/seed{train_seed}/manifest.csv")}
        subjects = have if subjects is None else subjects & have
    return methods, sorted(subjects or [])


def select(samples, subjects=None, methods=None, train_seed: int = 0, seed: int = 0, prompts=None,
           n_prompts: int = 6) -> pd.DataFrame:
    """The images to show, one row per (subject, method, prompt), checked before anything is drawn:
    a missing manifest, seed, prompt or image file is a one-line error naming it."""
    samples = Path(samples)
    if not samples.is_dir():
        raise DTIError(f"samples folder {samples} does not exist")
    present_methods, present_subjects = _present(samples, train_seed)
    methods = method_order(methods or present_methods)
    subjects = list(subjects or present_subjects)
    if not methods or not subjects:
        raise DTIError(f"no sampled images under {samples} (expected <method>/<subject>/seed{train_seed}/"
                       f"manifest.csv)")
    rows = []
    for subject in subjects:
        check_name(subject, "subject")
        frames = {}
        for method in methods:
            check_name(method, "method")
            path = manifest_path(samples, method, subject, train_seed)
            if not path.is_file():
                raise DTIError(f"no samples of {method} for {subject} at training seed {train_seed} ({path} missing)")
            frame = pd.read_csv(path, keep_default_na=False)
            if seed not in set(frame["seed"]):
                raise DTIError(f"{path} has no images at sampling seed {seed} (its seeds: "
                               f"{', '.join(map(str, sorted(set(frame['seed']))))})")
            frames[method] = frame.assign(file=[str(path.parent / f) for f in frame["file"]])
        common = set.intersection(*(set(f["prompt_index"]) for f in frames.values()))
        chosen = spread(common, n_prompts) if prompts is None else [int(p) for p in prompts]
        for method, frame in frames.items():
            for index in chosen:
                hit = frame[(frame["prompt_index"] == index) & (frame["seed"] == seed)]
                if hit.empty:
                    raise DTIError(f"{method}/{subject} has no prompt {index} at seed {seed} "
                                   f"(prompts 0-{frame['prompt_index'].max()})")
                r = hit.iloc[0]
                if not Path(r["file"]).is_file():
                    raise DTIError(f"image {r['file']} listed in the manifest is missing")
                rows.append({"subject": subject, "method": method, "prompt_index": index, "prompt": r["prompt"],
                             "seed": seed, "file": r["file"]})
    return pd.DataFrame(rows, columns=COLUMNS)


def plot_subject(chosen: pd.DataFrame, references: list, out_dir: Path, train_seed: int):
    """One subject's figure: references on top, methods (rows) by prompts (columns)."""
    subject = chosen["subject"].iloc[0]
    seed = int(chosen["seed"].iloc[0])
    methods = list(dict.fromkeys(chosen["method"]))
    indices = list(dict.fromkeys(chosen["prompt_index"]))
    by = chosen.set_index(["method", "prompt_index"])
    # the column's prompt as the first method sampled it (every method of a run set shares the placeholder)
    titles = [by.loc[(methods[0], i), "prompt"] for i in indices]
    cells = [[by.loc[(m, i), "file"] for i in indices] for m in methods]
    fig = image_grid(cells, [method_label(m) for m in methods], titles,
                     f"{subject}: each method's samples at sampling seed {seed} (training seed {train_seed})",
                     [(f"{subject}: reference images", references)], label_width=1.2, label_size=9)
    save_figure(fig, out_dir, f"qualitative_grid_{subject}",
                f"Subject {subject}: its reference images (top), then images sampled by each method (rows: "
                f"{', '.join(method_label(m) for m in methods)}) for {len(indices)} prompts of the set "
                f"(columns, prompts {', '.join(map(str, indices))}) at sampling seed {seed}, from the runs of "
                f"training seed {train_seed}.")
    return fig


def qualitative_grids(samples, references, out_dir, subjects=None, methods=None, train_seed: int = 0,
                      seed: int = 0, prompts=None, n_prompts: int = 6, n_references: int = 4,
                      tables=None) -> pd.DataFrame:
    """Every subject's figure; returns (and with ``tables`` writes) the images shown."""
    from dti.data import list_images, open_rgb

    if n_references < 0:
        raise DTIError(f"the number of reference images must be 0 or more, got {n_references}")
    chosen = select(samples, subjects, methods, train_seed, seed, prompts, n_prompts)
    refs = {}
    for subject in dict.fromkeys(chosen["subject"]):  # every folder read before any figure is drawn
        refs[subject] = [open_rgb(p, "reference") for p in list_images(Path(references) / subject)[:n_references]]
    if tables:
        write_csv(chosen, Path(tables) / "qualitative_grid.csv")
    for subject, group in chosen.groupby("subject", sort=False):
        plot_subject(group, refs[subject], Path(out_dir), train_seed)
    return chosen


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", required=True, help="the samples folder: <method>/<subject>/seed<N>/manifest.csv")
    parser.add_argument("--references", required=True, help="folder of the subjects' reference folders")
    parser.add_argument("--figures", required=True, help="folder for qualitative_grid_<subject>.{png,pdf,caption.txt}")
    parser.add_argument("--tables", help="folder for qualitative_grid.csv (the images shown)")
    parser.add_argument("--subjects", nargs="+", help="default: every subject that all methods sampled")
    parser.add_argument("--methods", nargs="+", help="default: every method sampled, in the paper's order")
    parser.add_argument("--train-seed", type=int, default=0, help="training seed of the runs shown (default 0)")
    parser.add_argument("--seed", type=int, default=0, help="sampling seed of the images shown (default 0)")
    parser.add_argument("--prompts", type=int, nargs="+", help="prompt indices (default: --n-prompts spread evenly)")
    parser.add_argument("--n-prompts", type=int, default=6, help="prompts shown when --prompts is not given")
    parser.add_argument("--n-references", type=int, default=4, help="reference images shown per subject")
    args = parser.parse_args(argv)
    try:
        qualitative_grids(args.samples, args.references, args.figures, args.subjects, args.methods, args.train_seed,
                          args.seed, args.prompts, args.n_prompts, args.n_references, args.tables)
    except DTIError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
