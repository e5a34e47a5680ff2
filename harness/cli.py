"""The qlora-harness command: list families and sizes (more subcommands join as they are built)."""
from __future__ import annotations

import argparse
import json
import sys

from harness.families import FAMILIES
from harness.util.errors import HarnessError


def param_counts() -> list[dict]:
    """Return one row per family and full size: parameters counted on the meta device, and the published count."""
    from harness.model.load import meta_model
    from harness.model.synth import make_config

    rows = []
    for name, family in FAMILIES.items():
        unavailable = family.unavailable(processor=False)  # counting needs the model class only
        for size in family.size_names():
            published = family.published_params.get(size)
            row = {"family": name, "size": size, "kind": family.kind, "model_class": family.model_class,
                   "params": None, "published_params": published, "relative_difference": None,
                   "gpu_tier": size in family.gpu_sizes, "unavailable": unavailable}
            if not unavailable:  # counted on the meta device; a family this transformers lacks shows why instead
                row["params"] = sum(p.numel() for p in meta_model(family, make_config(family, size)).parameters())
                row["relative_difference"] = None if not published else row["params"] / published - 1
            rows.append(row)
    return rows


def _list(args) -> int:
    rows = param_counts()
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"{'family':<16} {'size':<22} {'params':>15} {'published':>10} {'diff':>7} gpu")
    for r in rows:
        pub = f"{r['published_params'] / 1e9:.3f}B" if r["published_params"] else "-"
        diff = f"{100 * r['relative_difference']:+.2f}%" if r["relative_difference"] is not None else "-"
        params = f"{r['params']:>15,}" if r["params"] is not None else f"{'-':>15}"
        note = f"  ({r['unavailable']})" if r["unavailable"] else ""
        print(f"{r['family']:<16} {r['size']:<22} {params} {pub:>10} {diff:>7} {'yes' if r['gpu_tier'] else '':<3}{note}")
    return 0


def _run(args) -> int:
    import os
    from pathlib import Path

    from harness.model.preflight import load_checked
    from harness.model.synth import default_cache_dir
    from harness.tasks import experiments
    from harness.tasks.run import run_experiment
    from harness.util import env
    from harness.util.atomic import check_folder

    recipe = load_checked(args.recipe)  # the file given, not recipes/<its name>
    exp = experiments.for_recipe(args.recipe, recipe)
    size = args.size or ("full" if env.has_cuda() else "tiny")
    cache = Path(args.cache_dir).expanduser() if args.cache_dir else default_cache_dir(os.environ)
    check_folder(cache, "cache folder")
    out = check_folder(Path(args.out), "--out")
    path = run_experiment(exp, size, out, cache, model_sizes=args.model_size, recipe_path=Path(args.recipe))
    records = json.loads(path.read_text())["records"]
    failed = [r["case"] for r in records if r["status"] == "error"]
    print(f"{path}: {len(records)} arms, {len(failed)} failed{': ' + ', '.join(failed) if failed else ''}")
    return 1 if failed else 0


def _report(args) -> int:
    from pathlib import Path

    from harness.report.build import write_report

    report = write_report([Path(p) for p in args.results], Path(args.out))
    print(f"{report.path}: {len(report.charts)} plots")
    return 0


def _against_baselines(args) -> int:
    from pathlib import Path

    from harness.report import against

    results = Path(args.results)
    if not against.gpu_folders(results):
        found = "does not exist" if not results.exists() else "holds no GPU case records"
        raise HarnessError(f"against-baselines {results}: {found}; pass the folder that `pytest -m gpu --results-dir` "
                           "was given (it holds <gpu fingerprint>/<case>.json), or one of its <gpu> folders")
    for path, line in against.write(results, Path(args.baselines), Path(args.out) if args.out else None):
        print(f"{path}: {line}")
    return 0


def _recipe_show(args) -> int:
    from harness.families import get_family
    from harness.model import calls, lora
    from harness.model.load import meta_model
    from harness.model.synth import make_config
    from harness.recipe import load_recipe

    recipe = load_recipe(args.file)
    family = get_family(recipe.family)
    why = family.unavailable(processor=False)  # the module names come from the model's classes
    if why:
        raise HarnessError(f"recipe show {args.file}: {why}; show it under a transformers that has the family")
    skeleton = meta_model(family, make_config(family, "tiny"))  # module names only: the same at every size
    targets = None if recipe.peft is not None else lora.lora_targets(skeleton, family, recipe)
    print(f"# {recipe.source}: the calls this recipe makes "
          f"({'literal: ' + ', '.join(recipe.literal) if recipe.literal else 'compiled from the shorthand sections'})")
    print(calls.python_source(recipe, family, calls.compile_calls(recipe, family, skeleton), targets), end="")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run the command line; return the exit status."""
    parser = argparse.ArgumentParser(prog="qlora-harness", description="QLoRA validation and benchmark harness")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("list", help="every family and full size with its parameter count (meta device, no weights)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(run=_list)
    from harness import doctor

    p = sub.add_parser("doctor", help="library versions, the GPU and what is missing; --recipe/--checkpoint also checks them")
    doctor.add_arguments(p)
    p.set_defaults(run=doctor.run)
    from harness.gate import command as gate

    p = sub.add_parser("gate", help="run the checks in a reference and a candidate environment, compare them; "
                                    "exit 1 on a regression")
    gate.add_arguments(p)
    p.set_defaults(run=gate.run)
    from harness.gate import check

    p = sub.add_parser("check", help="the harness's checks on a recipe in this interpreter, without pytest; exit 1 "
                                     "when one fails")
    check.add_arguments(p)
    p.set_defaults(run=check.run)
    p = sub.add_parser("run", help="run a seed experiment's recipe (harness/data/recipes/seed-*.yaml): tiny on CPU, full size "
                                   "on a GPU; saves a results JSON")
    p.add_argument("recipe", help="a seed recipe, e.g. harness/data/recipes/seed-clip-static-dynamic.yaml")
    p.add_argument("--size", choices=("tiny", "full"), default=None,
                   help="model sizes to run (default: full with a CUDA GPU, tiny without)")
    p.add_argument("--out", default="results/seed", help="folder for the results JSON (default: results/seed)")
    p.add_argument("--cache-dir", default=None, help="synthetic checkpoints (default: $QLORA_HARNESS_CACHE)")
    p.add_argument("--model-size", action="append", default=None,
                   help="run only this model size of the experiment (repeatable), e.g. --model-size 7b")
    p.set_defaults(run=_run)
    from harness.measure import fit

    p = sub.add_parser("fit", help="will a recipe's training step fit a GPU? the peak by part and batch size, from "
                                   "the config alone (meta device, nothing loaded); exit 1 when nothing fits")
    fit.add_arguments(p)
    p.set_defaults(run=fit.run)
    p = sub.add_parser("recipe", help="what a recipe does: `recipe show FILE` prints the Python calls it makes")
    verbs = p.add_subparsers(dest="verb", required=True)
    show = verbs.add_parser("show", help="print the from_pretrained / BitsAndBytesConfig / LoraConfig calls as Python")
    show.add_argument("file", help="a recipe YAML file")
    show.set_defaults(run=_recipe_show)
    p = sub.add_parser("report", help="turn saved results into report.md with PNG plots")
    p.add_argument("results", nargs="*", default=["results"], help="folders of results JSON (default: results)")
    p.add_argument("--out", default="report", help="folder for report.md and its plots (default: report)")
    p.set_defaults(run=_report)
    p = sub.add_parser("against-baselines", help="a GPU run's gated memory figures beside the baselines': a Markdown "
                                                 "table, and whether each is within 0.5%%")
    p.add_argument("results", help="the folder `pytest -m gpu --results-dir` was given (or one of its <gpu> folders)")
    p.add_argument("--baselines", default="baselines",
                   help="the baselines folder, holding <gpu>/<case>.json (default: baselines)")
    p.add_argument("--out", default=None, help="the Markdown file (default: RESULTS/<gpu>/against-baselines.md)")
    p.set_defaults(run=_against_baselines)
    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except HarnessError as e:
        print(f"qlora-harness: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C: every write is atomic, so what is on disk is whole; say so in one line
        print(f"qlora-harness: interrupted: {args.command} stopped; files it had finished are kept, none is "
              "half-written", file=sys.stderr)
        return 130
    except OSError as e:  # the machine, not the harness: a full disk, a permission, a file that vanished
        print(f"qlora-harness: error: {e.strerror or e}{f': {e.filename}' if e.filename else ''}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
