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
        for size in family.size_names():
            model = meta_model(family, make_config(family, size))
            params = sum(p.numel() for p in model.parameters())
            published = family.published_params.get(size)
            rows.append({"family": name, "size": size, "kind": family.kind, "model_class": family.model_class,
                         "params": params, "published_params": published,
                         "relative_difference": None if not published else params / published - 1})
    return rows


def _list(args) -> int:
    rows = param_counts()
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"{'family':<12} {'size':<10} {'params':>15} {'published':>12} {'diff':>7}")
    for r in rows:
        pub = f"{r['published_params'] / 1e9:.2f}B" if r["published_params"] else "-"
        diff = f"{100 * r['relative_difference']:+.2f}%" if r["relative_difference"] is not None else "-"
        print(f"{r['family']:<12} {r['size']:<10} {r['params']:>15,} {pub:>12} {diff:>7}")
    return 0


def _run(args) -> int:
    import os
    from pathlib import Path

    from harness.model.synth import default_cache_dir
    from harness.tasks import experiments
    from harness.tasks.run import run_experiment
    from harness.util import env

    exp = experiments.for_recipe(args.recipe)
    size = args.size or ("full" if env.has_cuda() else "tiny")
    cache = Path(args.cache_dir).expanduser() if args.cache_dir else default_cache_dir(os.environ)
    path = run_experiment(exp, size, Path(args.out), cache, model_sizes=args.model_size)
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


def _recipe_show(args) -> int:
    from harness.families import check_size, get_family
    from harness.model import calls, load
    from harness.model.synth import make_config
    from harness.recipe import load_recipe

    recipe = load_recipe(args.file)
    family = get_family(recipe.family)
    check_size(family, args.size)
    compiled = calls.compile_calls(recipe, family, load.meta_model(family, make_config(family, args.size)))
    compiled.harness_load = calls.harness_load(args.device, recipe.allow_pickle, recipe.trust_remote_code)
    print(f"# {recipe.name} ({args.file}): the calls the harness makes for {family.name} at size {args.size}")
    print(calls.render(compiled), end="")
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
    p = sub.add_parser("run", help="run a seed experiment's recipe (recipes/seed-*.yaml): tiny on CPU, full size "
                                   "on a GPU; saves a results JSON")
    p.add_argument("recipe", help="a seed recipe, e.g. recipes/seed-clip-static-dynamic.yaml")
    p.add_argument("--size", choices=("tiny", "full"), default=None,
                   help="model sizes to run (default: full with a CUDA GPU, tiny without)")
    p.add_argument("--out", default="results/seed", help="folder for the results JSON (default: results/seed)")
    p.add_argument("--cache-dir", default=None, help="synthetic checkpoints (default: $QLORA_HARNESS_CACHE)")
    p.add_argument("--model-size", action="append", default=None,
                   help="run only this model size of the experiment (repeatable), e.g. --model-size 7b")
    p.set_defaults(run=_run)
    p = sub.add_parser("recipe", help="look at a recipe: `recipe show FILE` prints the Python calls it makes")
    recipe_sub = p.add_subparsers(dest="recipe_command", required=True)
    p = recipe_sub.add_parser("show", help="print the library calls (BitsAndBytesConfig, from_pretrained, LoraConfig...) "
                                           "a recipe makes, to hold against your script")
    p.add_argument("file", help="a recipe YAML file")
    p.add_argument("--size", default="tiny", help="model size whose module names resolve role shorthand (default: tiny)")
    p.add_argument("--device", default="cpu", help="the device the harness places the model on (default: cpu)")
    p.set_defaults(run=_recipe_show)
    p = sub.add_parser("report", help="turn saved results into report.md with PNG plots")
    p.add_argument("results", nargs="*", default=["results"], help="folders of results JSON (default: results)")
    p.add_argument("--out", default="report", help="folder for report.md and its plots (default: report)")
    p.set_defaults(run=_report)
    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except HarnessError as e:
        print(f"qlora-harness: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
