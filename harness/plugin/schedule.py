"""How the GPU tier's tests are grouped and ordered across pytest-xdist workers sharing one GPU.

A GPU run's time goes to building and reading full-size checkpoints and to the Unsloth children, not to the
measurements; so:
- the tests of one checkpoint (its matrix case, its held-out configurations, tests marked
  `@pytest.mark.checkpoint(family, size)`) form one xdist group: the checkpoint is built and read in one worker;
  its comparison variants form a group of their own (a comparison profiles up to six variants, one after the other:
  beside the rest of its checkpoint's tests it made the run's longest lane; a second worker reading the same
  checkpoint reads it from the page cache);
- groups go out costliest first (the checkpoint's published parameter count times its profiles), so no big group
  starts last, and the tests that only wait for an Unsloth record (its children run in the background) go last.
tests/gpu/conftest.py applies it; `--dist loadgroup` keeps the groups (harness.plugin.gpus keeps their order).
"""
from __future__ import annotations

from harness.families import get_family
from harness.measure.matrix import SIDE_BY_SIDE


def params_of(item) -> dict:
    """Return a test's parameters ({} when it has none)."""
    return item.callspec.params if hasattr(item, "callspec") else {}


def unsloth_case_of(item) -> tuple[str, str] | None:
    """Return the (family, size) whose Unsloth record a test waits for, or None."""
    if not item.get_closest_marker("unsloth"):
        return None
    params = params_of(item)
    return tuple(params["record"][:2]) if "record" in params else SIDE_BY_SIDE[:2]


def work_of(item) -> tuple[str, str, float] | None:
    """Return (xdist group, profile, cost) of a GPU test: its checkpoint's group (or its comparison's), the profile it
    needs and that profile's cost (the checkpoint's published parameter count per profile); None for a test outside
    the groups."""
    params = params_of(item)
    waits_for = unsloth_case_of(item)
    if waits_for:
        return f"unsloth-{waits_for[0]}-{waits_for[1]}", "unsloth", 0.0
    if "gpu_case" in params:
        case = params["gpu_case"][0]
        family, size, profile, count = case.family.name, case.size, case.id, 1
    elif "comparison_set" in params:
        family, size, _, names = params["comparison_set"]
        profile = f"comparison-{family}-{size}"
        return profile, profile, len(names) * get_family(family).published_params[size]
    elif "config" in params and hasattr(params["config"], "case"):  # a held-out configuration
        family, size, profile, count = params["config"].family, params["config"].size, params["config"].name, 1
    elif item.get_closest_marker("checkpoint"):  # a test that builds its own case: @pytest.mark.checkpoint(f, s)
        (family, size), profile, count = item.get_closest_marker("checkpoint").args, item.nodeid, 1
    else:
        return None
    return f"checkpoint-{family}-{size}", profile, count * get_family(family).published_params[size]


def xdist_group_of(item) -> str | None:
    """Return the group whose tests must share a worker: one checkpoint's profiles, one comparison's variants, or one
    Unsloth case's waiters."""
    work = work_of(item)
    return work[0] if work else None


def longest_first(items: list) -> list:
    """Return GPU tests in group order, the costliest group first and the Unsloth waiters last; within a group its
    tests by profile, each profile's tests together and in their order; tests outside the groups before the waiters."""
    works = [work_of(item) for item in items]
    cost: dict[str, dict[str, float]] = {}
    first_seen: dict[tuple[str, str], int] = {}
    for index, work in enumerate(works):
        if work:
            cost.setdefault(work[0], {})[work[1]] = work[2]
            first_seen.setdefault(work[:2], index)
    total = {group: sum(profiles.values()) for group, profiles in cost.items()}

    def key(index: int) -> tuple:
        work = works[index]
        if work is None:
            return (1, 0.0, "", index, index)
        waiting = unsloth_case_of(items[index]) is not None
        return (2 if waiting else 0, -total[work[0]], work[0], first_seen[work[:2]], index)

    return [items[i] for i in sorted(range(len(items)), key=key)]
