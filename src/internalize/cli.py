"""Command line: ``internalize distill``, ``eval``, ``synthesize``, ``generate`` and ``compare``.

``distill``, ``eval`` and ``synthesize`` parse the YAML config, apply ``section.key=value``
overrides and call the same functions as the Python API (``internalize.distill``,
``evaluate_artifact``, ``synthesize_inputs``); ``generate`` calls ``playground.answers`` and
``compare`` the functions of ``compare``. A bad input prints one line naming the file, field or
line and the fix, and exits with code 2. ``python -m internalize`` is the same command.

    internalize distill examples/over.yaml output.dir=runs/over train.lr=3e-4
    internalize distill examples/over.yaml train.save_every=5 --resume   # continue a killed run
    internalize eval examples/over.yaml --student runs/over/model output.dir=runs/over-eval
    internalize synthesize examples/over_synth.yaml data.synthesize.count=100
    internalize generate runs/over/model "How many legs does a cat have?"
    internalize generate smollm2-135m --config runs/over --compare runs/over/model --file questions.jsonl
    internalize compare runs/over runs/over-lr3e-4 --plot sweep.png
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import textwrap
import warnings
from pathlib import Path

from .config import CONDITIONS, POSITIONS, InternalizeError, describe_fields, load_config

KEYS_HELP = "Config keys (set in the YAML file or as section.key=value):\n" + describe_fields()

EXAMPLES = {
    "distill": ["internalize distill examples/over.yaml output.dir=runs/over train.lr=3e-4",
                "internalize distill examples/over.yaml output.dir=runs/over train.save_every=4 --resume"],
    "eval": ["internalize eval examples/over.yaml --student runs/over/model output.dir=runs/over-eval"],
    "synthesize": ["internalize synthesize examples/over_synth.yaml data.synthesize.count=100"],
    "generate": ['internalize generate runs/over/model "How many legs does a cat have?"',
                 'internalize generate smollm2-135m --context "Answer in French." "Name a colour."',
                 "internalize generate smollm2-135m --config runs/over --compare runs/over/model "
                 "--file examples/data/questions_eval.jsonl",
                 'internalize generate runs/over/model --sample --temperature 0.8 --top-p 0.95 --seed 1 "Hi" --json'],
    "compare": ["internalize compare runs/over runs/over-lr3e-4 runs/over-r32 --plot sweep.png",
                "internalize compare runs/over runs/over-then-french --out runs/chain   # a chain, in order"],
}


def _examples(*commands: str) -> str:
    lines = [line for c in commands for line in EXAMPLES[c]]
    return ("Examples:\n" if len(lines) > 1 else "Example:\n") + "\n".join(f"  {line}" for line in lines)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="internalize",
        description="Context distillation: bake a prompt's effect into a causal LM's weights.",
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=_examples(*EXAMPLES),
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    raw = argparse.RawDescriptionHelpFormatter

    def keys(command: str) -> dict:
        return dict(formatter_class=raw, epilog=_examples(command) + "\n\n" + KEYS_HELP)

    distill = sub.add_parser("distill", help="teacher with context -> student without it; report and artifact",
                             description="Distill the context of CONFIG into the model; writes OUT/model, "
                                         "OUT/metrics.json, OUT/report.md.", **keys("distill"))
    evaluate = sub.add_parser("eval", help="base vs teacher vs a saved student on the held-out inputs",
                              description="Evaluate a saved student against the base model without and with "
                                          "the context of CONFIG.", **keys("eval"))
    synth = sub.add_parser("synthesize", help="the model writes unlabeled task inputs (JSONL + provenance)",
                           description="Generate inputs from data.synthesize (task description and seed inputs) "
                                       "into data.synthesize.output (default OUT/synthesized.jsonl).", **keys("synthesize"))
    for p in (distill, evaluate, synth):
        p.add_argument("config", help="YAML config file")
        p.add_argument("overrides", nargs="*", metavar="section.key=value", help="config overrides (default: none)")
        p.add_argument("--overwrite", action="store_true", help="replace a run in output.dir (default: refuse)")
    evaluate.add_argument("--student", required=True, help="directory of the saved student (OUT/model)")
    distill.add_argument("--resume", action="store_true",
                         help="continue the unfinished run in output.dir from its last checkpoint (train.save_every)")

    gen = sub.add_parser(
        "generate", help="a model's or artifact's answers to prompts, with or without a context, or base vs teacher "
                         "vs student", formatter_class=raw, epilog=_examples("generate"),
        description=textwrap.fill("Answer each PROMPT (or each line of --file) with MODEL: a local Hugging Face "
                                  "directory, a run's model/, a .gguf file or smollm2-135m. With one prompt and a "
                                  "terminal, the answer is shown as it is generated.", 100))
    gen.add_argument("model", metavar="MODEL", help="what model.name accepts: a directory, a .gguf file, smollm2-135m")
    gen.add_argument("prompts", nargs="*", metavar="PROMPT", help="inputs to answer (quote each one)")
    gen.add_argument("--file", metavar="INPUTS.jsonl", help="JSONL of inputs, one {\"input\": ...} per line (after any PROMPTs)")
    where = gen.add_mutually_exclusive_group()
    where.add_argument("--context", metavar="TEXT", help="a context to answer with (default: none)")
    where.add_argument("--config", metavar="RUN_OR_CONFIG",
                       help="answer with a behaviour's prompt (context and demonstrations) from a config file or a "
                            "run directory")
    gen.add_argument("--position", choices=POSITIONS, default="system",
                     help="where --context goes (default: system)")
    gen.add_argument("--behaviour", metavar="NAME", help="which behaviour of --config (needed when it has several)")
    gen.add_argument("--compare", metavar="STUDENT_DIR",
                     help="also answer with the student artifact: base (MODEL without the context), teacher (MODEL "
                          "with it) and student (STUDENT_DIR without it) side by side; needs a context")
    gen.add_argument("--max-new-tokens", type=int, default=128, metavar="N", help="longest answer in tokens (default: 128)")
    gen.add_argument("--sample", action="store_true", help="sample instead of greedy decoding (default: greedy)")
    gen.add_argument("--temperature", type=float, default=1.0, metavar="T", help="sampling temperature (default: 1.0)")
    gen.add_argument("--top-p", type=float, default=1.0, metavar="P", help="nucleus sampling mass (default: 1.0)")
    gen.add_argument("--seed", type=int, default=0, metavar="S", help="sampling seed (default: 0)")
    gen.add_argument("--batch-size", type=int, default=16, metavar="B", help="prompts per batch (default: 16)")
    gen.add_argument("--device", default="auto", help="auto, cpu or cuda:N (default: auto)")
    gen.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32", help="(default: float32)")
    gen.add_argument("--trust-remote-code", action="store_true", help="run the model directory's own modelling code")
    gen.add_argument("--json", action="store_true",
                     help="print one JSON record per prompt: {input, output}, or {input, base, teacher, student}")

    comp = sub.add_parser(
        "compare", help="several runs side by side: a table and a plot", formatter_class=raw,
        epilog=_examples("compare"),
        description=textwrap.fill("For each run and each behaviour: base / teacher / student score (or agreement "
                                  "with the teacher when there is no scorer), the student's KL, forgetting, the chain "
                                  "of artifacts it started from and its wall time. Runs keep the order given (a "
                                  "sweep, or a chain of runs). Also reads an experiment record "
                                  "(experiments/*/results/NAME.json).", 100))
    comp.add_argument("runs", nargs="+", metavar="RUN_DIR", help="finished run directories (output.dir)")
    comp.add_argument("--plot", metavar="PNG", help="where to write the plot (default: compare.png in --out, or in "
                                                    "the working directory)")
    comp.add_argument("--no-plot", action="store_true", help="only the table")
    comp.add_argument("--out", metavar="DIR", help="also write compare.txt and compare.json there (and the plot)")
    comp.add_argument("--json", action="store_true", help="print the rows as JSON instead of the table")
    return parser


def _wrap(text: str, width: int) -> list[str]:
    lines = [piece for line in (text.splitlines() or [""]) for piece in (textwrap.wrap(line, width) or [""])]
    return lines or [""]


def _side_by_side(records: list[dict[str, str]]) -> str:
    """A plain-text table: input, base, teacher and student answers, each wrapped in its own column."""
    columns = ("input", *CONDITIONS)
    total = max(shutil.get_terminal_size((120, 24)).columns, 80)
    widths = [max(12, (total - 3 * 3) // 5)]
    widths += [(total - 3 * 3 - widths[0]) // 3] * 3
    rule = "-+-".join("-" * w for w in widths)
    out = [" | ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip(), rule]
    for record in records:
        cells = [_wrap(record[c], w) for c, w in zip(columns, widths, strict=True)]
        for i in range(max(map(len, cells))):
            out.append(" | ".join((cell[i] if i < len(cell) else "").ljust(w)
                                  for cell, w in zip(cells, widths, strict=True)).rstrip())
        out.append(rule)
    return "\n".join(out)


def _generate(args: argparse.Namespace, rest: list[str]) -> int:
    from .data import read_jsonl
    from .playground import answers, prompt_from

    inputs: list[str | dict] = list(args.prompts) + rest
    if args.file:
        inputs += read_jsonl(args.file, "--file")
    if not inputs:
        raise InternalizeError("no prompts: give PROMPT arguments or --file inputs.jsonl")
    if args.behaviour and not args.config:
        raise InternalizeError("--behaviour names a behaviour of --config; give --config too")
    if args.position != "system" and args.context is None:
        raise InternalizeError(f"--position {args.position} places --context; give --context too (a --config "
                               "behaviour's prompt has its own position)")
    prompt = None
    if args.config:
        prompt = prompt_from(args.config, args.behaviour)
    elif args.context is not None:
        from .config import PromptConfig

        prompt = PromptConfig(context=args.context, position=args.position)
    streaming = len(inputs) == 1 and not args.json and sys.stdout.isatty()
    started: list[str] = []

    def stream(condition: str, piece: str) -> None:
        if condition not in started:  # a new answer: end the previous one, name this one (when comparing)
            if started:
                print(flush=True)
            started.append(condition)
            if args.compare:
                print(f"{condition + ':':<9}", end="", flush=True)
        print(piece, end="", flush=True)

    records = answers(args.model, inputs, prompt, args.compare, max_new_tokens=args.max_new_tokens,
                      do_sample=args.sample, temperature=args.temperature, top_p=args.top_p, seed=args.seed,
                      batch_size=args.batch_size, device=args.device, dtype=args.dtype,
                      trust_remote_code=args.trust_remote_code, stream=stream if streaming else None)
    if streaming:
        print(flush=True)
    elif args.json:
        for record in records:
            print(json.dumps(record, ensure_ascii=False))
    elif args.compare:
        print(_side_by_side(records))
    elif len(records) == 1:
        print(records[0]["output"])
    else:
        print("\n\n".join(f"> {r['input']}\n{r['output']}" for r in records))
    return 0


def _compare(args: argparse.Namespace, rest: list[str]) -> int:
    from .compare import load_runs, plot, table
    from .data import write_atomic

    rows = load_runs(list(args.runs) + rest)
    text = table(rows)
    as_json = json.dumps([r.to_dict() for r in rows], indent=2)
    if args.out:
        out = Path(args.out)
        write_atomic(out / "compare.txt", text + "\n")
        write_atomic(out / "compare.json", as_json + "\n")
    if not args.no_plot:
        path = Path(args.plot) if args.plot else Path(args.out or ".") / "compare.png"
        plot(rows, path)
    print(as_json if args.json else text)
    return 0


def _configured(args: argparse.Namespace) -> dict | None:
    """The result to print (None: a process of a multi-process run other than the main one, which prints it)."""
    from .pipeline import distill, evaluate_artifact, synthesize_inputs
    from .runtime import Runtime

    overrides = list(args.overrides) + (["output.overwrite=true"] if args.overwrite else []) + (
        ["output.resume=true"] if getattr(args, "resume", False) else [])
    cfg = load_config(args.config, overrides)
    if args.command == "distill":
        result = distill(cfg)
        return result if Runtime.distributed(cfg.model.device).is_main else None
    if args.command == "eval":
        return evaluate_artifact(cfg, args.student)
    return synthesize_inputs(cfg)


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args, rest = parser.parse_known_args(argv)  # overrides, prompts or runs may also follow options
    if args.command in ("generate", "compare"):  # more PROMPTs or RUN_DIRs after an option
        if any(r.startswith("-") for r in rest):
            parser.error(f"unrecognized arguments: {' '.join(rest)}")
    else:
        if any(r.startswith("-") or "=" not in r for r in rest):
            parser.error(f"unrecognized arguments: {' '.join(rest)}")
        args.overrides, rest = list(args.overrides) + rest, []
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    if args.command != "compare":
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")  # raised inside peft, not ours
        if args.quiet or args.command == "generate":  # generate: stdout is the answers, stderr stays quiet too
            hf_logging.disable_progress_bar()
    try:
        if args.command == "generate":
            return _generate(args, rest)
        if args.command == "compare":
            return _compare(args, rest)
        result = _configured(args)
    except InternalizeError as e:
        print(f"internalize: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # a full disk, a directory made read-only mid-run: what failed, in one line
        where = f"{e.filename}: " if e.filename else ""
        again = "" if args.command in ("generate", "compare") else " (a run with checkpoints continues with --resume)"
        print(f"internalize: error: {where}{e.strerror or e}; free space or fix the permissions, then run again{again}",
              file=sys.stderr)
        return 2
    if result is not None:
        print(json.dumps(result, indent=2))  # distill and eval: {behaviour: {base, teacher, student}}
    return 0


if __name__ == "__main__":
    sys.exit(main())
