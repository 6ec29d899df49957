"""The five analyses of learned tokens inside the text encoders, in one process: the base model's
tokenizers and text encoders load once for all of them (the workflow's `token_analyses` rule).

    python -m analysis.token_analyses --model experiments/mini/world/pipeline --runs RUN ... \\
        --first-runs RUN ... --figures figures --tables tables

Each analysis reads its own module's defaults and writes what its own command writes:
``vocab_norms`` and ``positional_probe`` and ``contextual_map`` over ``--runs``, ``nearest_words`` and
``residual_stagnation`` over ``--first-runs`` (one subject's tokens, as their tables show them).
"""

from __future__ import annotations

import argparse

from analysis import contextual_map, nearest_words, positional_probe, residual_stagnation, vocab_norms
from analysis.common import load_text_encoders


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="base pipeline (hub id or folder)")
    parser.add_argument("--runs", nargs="+", required=True, help="finished run directories (every run)")
    parser.add_argument("--first-runs", nargs="+", required=True,
                        help="the runs whose tokens the nearest-word and residual analyses show")
    parser.add_argument("--figures", required=True, help="folder for the figures (PNG, PDF, caption)")
    parser.add_argument("--tables", required=True, help="folder for the tidy CSV tables")
    parser.add_argument("--probe", nargs=argparse.REMAINDER, default=[], metavar="OPTION",
                        help="the positional probe's own options (last: everything after it goes to the probe)")
    parser.add_argument("--initializer", help="residual stagnation: the word swept over norms")
    parser.add_argument("--related", nargs="+", help="contextual map: words related to the concepts")
    parser.add_argument("--unrelated", nargs="+", help="contextual map: words unrelated to them")
    args = parser.parse_args(argv)
    common = ["--model", args.model, "--tables", args.tables]
    figures = ["--figures", args.figures]
    words = [*(["--related", *args.related] if args.related else []),
             *(["--unrelated", *args.unrelated] if args.unrelated else [])]
    initializer = ["--initializer", args.initializer] if args.initializer else []
    jobs = [(vocab_norms, [*common, *figures, "--runs", *args.runs]),
            (nearest_words, [*common, "--runs", *args.first_runs]),
            (positional_probe, [*common, *figures, "--runs", *args.runs, *args.probe]),
            (residual_stagnation, [*common, *figures, "--runs", *args.first_runs, *initializer]),
            (contextual_map, [*common, *figures, "--runs", *args.runs, *words])]
    # every command line is parsed before the encoders load: a bad option fails at once
    parsed = [(module, module.parser().parse_args(words)) for module, words in jobs]
    encoders = load_text_encoders(args.model)
    for module, module_args in parsed:
        module.analyse(module_args, encoders)


if __name__ == "__main__":
    main()
