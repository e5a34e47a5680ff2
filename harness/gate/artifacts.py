"""Artifacts carried both ways: each side saves what users save, the other side loads it.

Phase one (the collect step, `--artifacts DIR`): from the model the dynamics trained (a non-zero adapter, so a
dropped adapter shows), each side writes under DIR/<case>/ the adapter, a merged 16-bit checkpoint and the 4-bit
base saved pre-quantized, with a manifest of its own outputs on the example batch. Phase two (the carry step,
`--load-artifacts OTHER_DIR`): each side loads the other's, checks that every tensor arrived, and compares its
outputs with the ones the saving side recorded. Adapters that older releases wrote (harness/data/adapters/) are loaded
in the collect step too.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

from harness.checks import carried, inputs
from harness.families import DUAL_ENCODER
from harness.model import load, merge, pipeline
from harness.model.generate import logits
from harness.util.atomic import write_json
from harness.util.resources import data_path

from .facts import CHECK, SKIPPED, decode, encode, fact

MANIFEST = "manifest.json"
FIXTURES = data_path("adapters")  # shipped in the wheel (harness/data/adapters)
FROZEN_ROLES = ("vision_tower", "projector")  # a merge must carry these byte for byte


def case_folder(root: Path, key: str) -> Path:
    """Return the folder of one case's artifacts under root (a readable, file-safe name)."""
    return Path(root) / re.sub(r"[^A-Za-z0-9.+-]+", "_", key)


def _batch(c: pipeline.Case, processor, device: str):
    count = 3 if c.family.kind == DUAL_ENCODER else 1
    return inputs.example_batch(c.family, processor, count=count).to(device)


def _encoded(tensor) -> dict:
    t = tensor.detach().float().cpu()
    return {"shape": list(t.shape), "float32_base64": encode(t)}


def save(c: pipeline.Case, h: pipeline.Harnessed, folder: Path, cache_dir: Path, device: str, versions: dict) -> list[dict]:
    """Write the case's adapter (from h, trained, before any inference forward), merged checkpoint and pre-quantized 4-bit base into folder; return
    the facts of saving (each save either works or says why not)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    batch = _batch(c, h.processor, device)
    manifest = {"case": c.id, "versions": versions, "family": c.family.name}
    # The 4-bit base is saved before any forward: on CPU, bitsandbytes repacks 4-bit weights at the first one.
    _, base = pipeline.load_base(c, cache_dir, device)
    if c.recipe.quantization.load_in_4bit:
        base.save_pretrained(folder / "quantized", safe_serialization=True)
        states = carried.quant_states(base)  # before the forward too: the repacked weights read back rounded
        manifest["quantized"] = {"logits": _encoded(logits(base, batch)), "quant_states": states,
                                 "dtype": str(base.dtype).removeprefix("torch.")}
    del base
    manifest["trained_modules"] = carried.trained_modules(h.model)  # what the merge may rewrite
    h.model.save_pretrained(folder / "adapter")
    merged = merge.merged_model(h.model, c.recipe.quantization.compute_dtype)  # before h's first inference forward
    merge.save_merged(merged, h.processor, folder / "merged")
    manifest["merged"] = {"logits": _encoded(logits(merged, batch)), "dtype": c.recipe.quantization.compute_dtype}
    del merged
    h.model.eval()
    manifest["adapter"] = {"logits": _encoded(logits(h.model, batch))}
    write_json(folder / MANIFEST, manifest)
    saved = [k for k in ("adapter", "merged", "quantized") if k in manifest]
    return [fact("artifacts saved for the other side", CHECK, saved, ", ".join(saved))]


def _close(name: str, what: str, got, expected: dict, tolerance: float) -> list[str]:
    ref = decode(expected["float32_base64"], expected["shape"])
    out = got.detach().float().cpu().numpy()
    if list(out.shape) != list(expected["shape"]):
        return [f"{what} of {name}: outputs of shape {tuple(out.shape)} here, {tuple(expected['shape'])} where it was saved"]
    spread = float(ref.std()) or 1.0
    diff = float(abs(out.astype("f8") - ref.astype("f8")).max())
    if diff > tolerance * spread:
        return [f"{what} of {name}: outputs here differ from the saving side's by max |Δ| {diff:.4g}, {diff / spread:.1%} "
                f"of their standard deviation (tolerance {tolerance:.1%})"]
    return []


def load_facts(c: pipeline.Case, folder: Path, saved_by: str, cache_dir: Path, device: str, tolerance: float) -> list[dict]:
    """Return the facts of loading the other side's artifacts in folder: adapter, merged checkpoint, 4-bit checkpoint;
    one that raises is a failed fact naming the error, and the others still load."""
    folder = Path(folder)
    who = f"saved by the {saved_by}"
    if not (folder / MANIFEST).is_file():  # the other side's checks raised before it saved: its row says why
        return [fact(f"artifacts {who} load", SKIPPED, None, f"skipped: the {saved_by} saved no artifacts for {c.id} "
                                                             "(its checks of this case raised)")]
    manifest = json.loads((folder / MANIFEST).read_text())
    ctx = {"case": c, "folder": folder, "manifest": manifest, "cache_dir": cache_dir, "device": device,
           "tolerance": tolerance, "where": f"{who} ({_versions(manifest['versions'])})"}
    ckpt = pipeline.checkpoint_of(c, cache_dir, device)
    ctx["batch"] = _batch(c, load.load_processor(ckpt, c.family, c.recipe.trust_remote_code), device)
    facts = []
    for check, loader, needed in ((f"adapter {who} loads", _load_adapter, "adapter"),
                                  (f"merged 16-bit checkpoint {who} loads", _load_merged, "merged"),
                                  (f"4-bit checkpoint {who} loads pre-quantized", _load_quantized, "quantized")):
        if needed not in manifest:
            continue
        try:
            value, shown, problems = loader(ctx)
        except Exception as e:  # noqa: BLE001 - an artifact that cannot be loaded or run is the fact
            value, shown = None, "raised"
            problems = [f"{needed} of {c.id} {ctx['where']}: loading and running it here raised {type(e).__name__}: "
                        f"{str(e).strip().splitlines()[0] if str(e).strip() else ''}"]
        facts.append(fact(check, CHECK, value, shown, problems))
    return facts


def _load_adapter(ctx):
    c, manifest, name = ctx["case"], ctx["manifest"], ctx["case"].id
    _, base = pipeline.load_base(c, ctx["cache_dir"], ctx["device"])
    model, result = carried.load_adapter(base, ctx["folder"] / "adapter")
    problems = result.problems(name) + _close(name, "adapter " + ctx["where"], logits(model, ctx["batch"]),
                                              manifest["adapter"]["logits"], ctx["tolerance"])
    shown = f"{result.saved_keys - len(result.unexpected)} of {result.saved_keys} tensors loaded"
    return ({"saved": result.saved_keys, "missing": len(result.missing)},
            shown + (", outputs match" if not problems else ""), problems)


def _load_merged(ctx):
    c, manifest, name = ctx["case"], ctx["manifest"], ctx["case"].id
    dtype = manifest["merged"]["dtype"]
    # Judged by what the saving side built, never by the recipe's targets: tensors of modules that trained there (LoRA
    # on them, or saved whole) may change in a merge, every other vision/projector tensor must not. Both sides of a
    # gate run write their manifests with this checkout's code (the folders are emptied first), so the list is there.
    roles = [r for r in FROZEN_ROLES if r in c.family.roles]
    base_tensors = {}
    if roles:
        _, base = pipeline.load_base(c, ctx["cache_dir"], ctx["device"])
        trained_here = [m for m in manifest["trained_modules"] if c.family.role_of(m) in roles]  # the towers' own
        base_tensors = carried.base_tensors_of_roles(base, c.family, roles, dtype, skip_modules=trained_here)
        del base
    merged, warned = carried.load_merged(ctx["folder"] / "merged", c.family, dtype, ctx["device"])
    found = carried.MergedLoad(carried.quantization_marks(merged.config), len(carried.linear4bit_names(merged)),
                               warnings=warned)
    if base_tensors:
        q = c.recipe.quantization
        four_bit = [r for r in roles if q.load_in_4bit and r not in q.keep_16bit]
        found.frozen_roles, found.changed = carried.compare_roles(merged, base_tensors, c.family, four_bit)
    problems = found.problems(name) + _close(name, "merged checkpoint " + ctx["where"], logits(merged, ctx["batch"]),
                                             manifest["merged"]["logits"], ctx["tolerance"])
    compared = sum(found.frozen_roles.values())
    return ({"linear4bit": found.linear4bit},
            f"no quantization config, {compared} vision/projector tensors as the base's" if not problems
            else f"{len(problems)} problems", problems)


def _load_quantized(ctx):
    c, manifest, name = ctx["case"], ctx["manifest"], ctx["case"].id
    model, warned = carried.load_prequantized(ctx["folder"] / "quantized", c.family, ctx["device"])
    states = carried.quant_states(model)  # before any forward: on CPU the first one repacks the 4-bit weights
    problems = carried.quant_state_problems(manifest["quantized"]["quant_states"], states, name)
    problems += [f"pre-quantized 4-bit checkpoint of {name}: loading warned: {w[:300]}" for w in warned[:1]]
    problems += _close(name, "pre-quantized 4-bit checkpoint " + ctx["where"], logits(model, ctx["batch"]),
                       manifest["quantized"]["logits"], ctx["tolerance"])
    dtype, saved_dtype = str(model.dtype).removeprefix("torch."), manifest["quantized"].get("dtype")
    if problems and saved_dtype and dtype != saved_dtype:
        problems.append(f"pre-quantized 4-bit checkpoint of {name}: from_pretrained without a dtype loads it in "
                        f"{dtype} here, where the saving side ran {saved_dtype}: the default dtype differs")
    shown = f"{len(states)} Linear4bit with their quant states, {dtype}"
    return len(states), shown if not problems else f"{len(problems)} problems ({dtype})", problems


def _versions(versions: dict) -> str:
    return ", ".join(f"{k} {versions.get(k)}" for k in ("transformers", "peft", "bitsandbytes") if versions.get(k))


def fixture_folders(family_name: str, root: Path = FIXTURES) -> list[Path]:
    """Return the adapter fixtures saved by older releases for a family (folders holding adapter_config.json)."""
    base = Path(root) / family_name
    return sorted(p.parent for p in base.glob("*/adapter_config.json")) if base.is_dir() else []


def fixture_facts(c: pipeline.Case, cache_dir: Path, device: str, root: Path = FIXTURES) -> list[dict]:
    """Return, per adapter fixture of the case's family, whether this environment loads every tensor of it.

    The fixtures are LoRA on the tiny model (the committed files stay small): at another size their shapes cannot
    fit, so the case gets one skipped fact saying so (the adapters each side saves at that size are carried).
    """
    folders = fixture_folders(c.family.name, root)
    if folders and c.size != "tiny":
        return [fact("adapter fixtures load", SKIPPED, None,
                     f"skipped: the {len(folders)} adapter fixture(s) of {c.family.name} are saved for its tiny size, "
                     f"this case is {c.size}")]
    facts = []
    for folder in folders:
        _, base = pipeline.load_base(c, cache_dir, device)
        _, result = carried.load_adapter(base, folder)
        facts.append(fact(f"adapter fixture {folder.name} loads", CHECK,
                          {"saved": result.saved_keys, "missing": len(result.missing)},
                          f"{result.saved_keys - len(result.unexpected)} of {result.saved_keys} tensors loaded",
                          result.problems(f"{c.id} (fixture {folder.name})")))
        del base
    return facts


def _older(reference: dict, candidate: dict, library: str = "transformers") -> bool:
    from packaging.version import Version

    old, new = reference.get("versions", {}).get(library), candidate.get("versions", {}).get(library)
    return bool(old and new) and Version(old) < Version(new)


def carried_rows(reference: dict, candidate: dict):
    """Return the verdict rows of the carry step: each side's loads of the other's artifacts.

    The candidate must load everything the reference saved (fail otherwise). The reference must load the candidate's
    adapter too (adapters go both ways: fail); a full checkpoint saved by a newer transformers that an older one
    cannot run is reported as changed: transformers does not promise that older releases read newer checkpoints.
    """
    from .compare import CHANGED, FAIL, PASS, SKIP, Row

    newer_saves = _older(reference, candidate)
    rows = []
    for loader, data in (("candidate", candidate), ("reference", reference)):
        for key, entry in data["cases"].items():
            soft = loader == "reference" and newer_saves
            if entry.get("error"):
                rows.append(Row(key, f"artifacts of the other side load in the {loader}", CHANGED if soft else FAIL,
                                "saved" if loader == "candidate" else "raised", "raised" if loader == "candidate" else "saved",
                                f"{key}: loading the other side's artifacts in the {loader} raised {entry['error']}"))
                continue
            for f in entry["facts"]:
                shown = (("saved", f["shown"]) if loader == "candidate" else (f["shown"], "saved"))
                ok = f["ok"] is not False
                status = PASS if ok else CHANGED if soft and not f["check"].startswith("adapter") else FAIL
                if f["kind"] == SKIPPED:
                    rows.append(Row(key, f"{f['check']} in the {loader}", SKIP, *shown, f["shown"]))
                    continue
                note = " (an older transformers reading a newer one's checkpoint)" if status == CHANGED else ""
                rows.append(Row(key, f"{f['check']} in the {loader}", status, *shown,
                                "" if ok else "; ".join(f["problems"]) + note))
    return rows
