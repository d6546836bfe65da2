"""The part plan, recorded in the store: which part every video belongs to, fixed once and only ever extended.

```
plan/zarr.json                 group
plan/<seq>/zarr.json           group; attributes["vivitcache_plan"] = {seq, made, parts: [{part_id, videos:
                               [{id, path, label, split}]}]}
```

Why recorded (and not a hash bucket of the id): a bucket's contents change as annotations grow, and a committed part
never changes, so buckets would need generations anyway; a recorded plan keeps `--videos-per-part` meaningful and
lets a part hold thousands of videos. A video planned once keeps its part for ever, whatever annotation file or
`--videos-per-part` a later or concurrent run uses, so no two runs can put it in two parts. Each plan record lists
the videos' sources, so any run can extract any planned part, also one planned by a run with other annotations.

The one exception to "keeps its part for ever" is a retry of the failure ledger (`replan`): a video committed only
as a failure (no tokens) is planned again, into a new part, when its source changed or with `extract --retry-failed`.
A later record wins for such an id. `replan` re-plans an id only while the plan still has it in the part it failed
in, so two runs retrying at once agree on one new part, and its tokens are committed once.

Extending is lock-free and race-safe: a run reads every record, plans the ids no record (and no committed part) has,
builds the next record in `staging/` and renames it to `plan/<seq + 1>`. rename(2) of a folder onto an existing
non-empty folder fails, so of two runs racing for the same number exactly one wins; the loser reads again and plans
what is still unplanned under the next number. Every record is therefore planned knowing all records before it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from vivitcache.provenance import now_iso
from vivitcache.lease import host_name, new_token
from vivitcache.store.layout import META, STAGING, StoreError, group_meta, read_group_attrs, \
    write_json_atomic

PLAN = "plan"
PLAN_KEY = "vivitcache_plan"


@dataclass
class Plan:
    """Every recorded part: {part_id: [video entry]}, and each planned id's part."""

    parts: dict[str, list[dict]] = field(default_factory=dict)
    part_of: dict[str, str] = field(default_factory=dict)
    """Each planned id's part: the latest record's (a retried failure is re-planned into a new part)."""
    last_seq: int = -1


def read_plan(root: Path) -> Plan:
    plan = Plan()
    try:
        seqs = sorted(int(n) for n in os.listdir(root / PLAN) if n.isdigit())
    except FileNotFoundError:
        return plan
    for seq in seqs:
        record = read_group_attrs(root / PLAN / f"{seq:08d}", PLAN_KEY)
        for part in record["parts"]:
            plan.parts[part["part_id"]] = part["videos"]
            for video in part["videos"]:
                plan.part_of[video["id"]] = part["part_id"]
        plan.last_seq = seq
    return plan


def extend_plan(root: Path, entries: list[dict], videos_per_part: int, done: set[str]) -> tuple[Plan, int]:
    """Plan every entry ({id, path, label, split}) that neither the plan nor `done` (ids committed outside the plan,
    by an older vivitcache) has; returns (the plan, how many ids this call planned)."""
    from vivitcache.store.writer import plan_parts  # the grouping rule (sorted ids, hashed part ids)

    def cut(plan: Plan) -> dict[str, list[dict]]:
        new = {e["id"]: e for e in entries if e["id"] not in plan.part_of and e["id"] not in done}
        return {p.part_id: [new[i] for i in p.ids] for p in plan_parts(list(new), videos_per_part)}

    return _publish(root, cut)


def record_parts(root: Path, parts: dict[str, list[dict]]) -> Plan:
    """Record parts exactly as given ({part_id: entries}; ids the plan already has are left out)."""

    def keep(plan: Plan) -> dict[str, list[dict]]:
        out = {pid: [e for e in videos if e["id"] not in plan.part_of] for pid, videos in parts.items()}
        return {pid: videos for pid, videos in out.items() if videos}

    return _publish(root, keep)[0]


def replan(root: Path, entries: list[dict], videos_per_part: int, failed_in: dict[str, str]) -> Plan:
    """Plan ledgered videos again, into new parts: each entry ({id, path, label, split}) whose id the plan still has
    in the part it failed in (`failed_in[id]`; re-planned by another run meanwhile: left alone). A new part's id
    hashes its ids with the parts they failed in, so a second retry of the same videos gets another part."""
    from vivitcache.store.writer import plan_parts

    def cut(plan: Plan) -> dict[str, list[dict]]:
        due = {e["id"]: e for e in entries if plan.part_of.get(e["id"], failed_in[e["id"]]) == failed_in[e["id"]]}
        out = {}
        for part in plan_parts(list(due), videos_per_part):
            salt = json.dumps([part.ids, sorted({failed_in[i] for i in part.ids})])
            out[hashlib.sha256(salt.encode()).hexdigest()[:16]] = [due[i] for i in part.ids]
        return {pid: videos for pid, videos in out.items() if pid not in plan.parts}

    return _publish(root, cut)[0]


def _publish(root: Path, cut) -> tuple[Plan, int]:
    """Publish `cut(plan)` as the next plan record, re-reading and re-cutting after losing a race."""
    planned = 0
    while True:
        plan = read_plan(root)
        parts = cut(plan)
        if not parts:
            return plan, planned
        seq = plan.last_seq + 1
        record = {"seq": seq, "made": {"host": host_name(), "pid": os.getpid(), "time": now_iso()},
                  "parts": [{"part_id": pid, "videos": videos} for pid, videos in parts.items()]}
        if not (root / PLAN / META).exists():
            (root / PLAN).mkdir(exist_ok=True)
            write_json_atomic(root / PLAN / META, group_meta({}))
        tmp = root / STAGING / f"plan-{new_token()}"
        tmp.mkdir()
        try:
            write_json_atomic(tmp / META, group_meta({PLAN_KEY: record}))
            os.rename(tmp, root / PLAN / f"{seq:08d}")
            planned += sum(len(v) for v in parts.values())
        except OSError as e:
            if not (root / PLAN / f"{seq:08d}").exists():
                raise StoreError(f"cannot extend the part plan of {root}: {e}") from None
            # another run took this number: read again
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
