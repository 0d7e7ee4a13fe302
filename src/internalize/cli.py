"""Command line: ``internalize distill``, ``internalize eval`` and ``internalize synthesize``.

Each parses the YAML config, apply ``section.key=value`` overrides and call the same functions as
the Python API (``internalize.distill``, ``evaluate_artifact``, ``synthesize_inputs``). A bad input prints
one line naming the file, field or line and the fix, and exits with code 2.

    internalize distill examples/over.yaml output.dir=runs/over train.lr=3e-4
    internalize distill examples/over.yaml train.save_every=5 --resume   # continue a killed run
    internalize eval examples/over.yaml --student runs/over/model output.dir=runs/over-eval
    internalize synthesize examples/over_synth.yaml data.synthesize.count=100
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import warnings

from .config import InternalizeError, describe_fields, load_config

KEYS_HELP = "Config keys (set in the YAML file or as section.key=value):\n" + describe_fields()


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="internalize",
        description="Context distillation: bake a prompt's effect into a causal LM's weights.",
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    common = dict(formatter_class=argparse.RawDescriptionHelpFormatter, epilog=KEYS_HELP)
    distill = sub.add_parser("distill", help="teacher with context -> student without it; report and artifact",
                             description="Distill the context of CONFIG into the model; writes OUT/model, "
                                         "OUT/metrics.json, OUT/report.md.", **common)
    evaluate = sub.add_parser("eval", help="base vs teacher vs a saved student on the held-out inputs",
                              description="Evaluate a saved student against the base model without and with "
                                          "the context of CONFIG.", **common)
    synth = sub.add_parser("synthesize", help="the model writes unlabeled task inputs (JSONL + provenance)",
                           description="Generate inputs from data.synthesize (task description and seed inputs) "
                                       "into data.synthesize.output (default OUT/synthesized.jsonl).", **common)
    for p in (distill, evaluate, synth):
        p.add_argument("config", help="YAML config file")
        p.add_argument("overrides", nargs="*", metavar="section.key=value", help="config overrides (default: none)")
        p.add_argument("--overwrite", action="store_true", help="replace a run in output.dir (default: refuse)")
    evaluate.add_argument("--student", required=True, help="directory of the saved student (OUT/model)")
    distill.add_argument("--resume", action="store_true",
                         help="continue the unfinished run in output.dir from its last checkpoint (train.save_every)")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args, rest = parser.parse_known_args(argv)  # overrides may also follow options such as --student
    if any(r.startswith("-") or "=" not in r for r in rest):
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    args.overrides = list(args.overrides) + rest
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")  # raised inside peft, not ours
    if args.quiet:
        hf_logging.disable_progress_bar()
    from .pipeline import distill, evaluate_artifact, synthesize_inputs

    try:
        overrides = list(args.overrides) + (["output.overwrite=true"] if args.overwrite else []) + (
            ["output.resume=true"] if getattr(args, "resume", False) else [])
        cfg = load_config(args.config, overrides)
        if args.command == "distill":
            result = distill(cfg)
        elif args.command == "eval":
            result = evaluate_artifact(cfg, args.student)
        else:
            result = synthesize_inputs(cfg)
    except InternalizeError as e:
        print(f"internalize: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # a full disk, a directory made read-only mid-run: what failed, in one line
        where = f"{e.filename}: " if e.filename else ""
        print(f"internalize: error: {where}{e.strerror or e}; free space or fix the permissions, then run again "
              "(a run with checkpoints continues with --resume)", file=sys.stderr)
        return 2
    print(json.dumps(result, indent=2))  # distill and eval: {behaviour: {base, teacher, student}}
    return 0


if __name__ == "__main__":
    sys.exit(main())
