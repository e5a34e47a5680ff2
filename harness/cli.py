"""The qlora-harness command: list families and sizes (more subcommands join as they are built)."""
from __future__ import annotations

import argparse
import json
import sys

from .errors import HarnessError
from .families import FAMILIES


def param_counts() -> list[dict]:
    """Return one row per family and full size: parameters counted on the meta device, and the published count."""
    from .load import meta_model
    from .synth import make_config

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


def main(argv: list[str] | None = None) -> int:
    """Run the command line; return the exit status."""
    parser = argparse.ArgumentParser(prog="qlora-harness", description="QLoRA validation and benchmark harness")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("list", help="every family and full size with its parameter count (meta device, no weights)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(run=_list)
    from . import doctor

    p = sub.add_parser("doctor", help="library versions, the GPU and what is missing; --recipe/--checkpoint also checks them")
    doctor.add_arguments(p)
    p.set_defaults(run=doctor.run)
    from .gate import command as gate

    p = sub.add_parser("gate", help="run the checks in a reference and a candidate environment, compare them; "
                                    "exit 1 on a regression")
    gate.add_arguments(p)
    p.set_defaults(run=gate.run)
    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except HarnessError as e:
        print(f"qlora-harness: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
