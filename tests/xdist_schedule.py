"""The order in which pytest-xdist hands the tests to its workers (`--dist loadgroup`, see
tests/conftest.py): every test is its own unit of work, the tests of one outside service
(Slurm, Ray, the real agent CLIs) run one at a time, and the longest tests start first.

Why not xdist's own loadgroup: it learns a test's group from an `@group` suffix that its
worker appends to the node id, and pytest 9.2 made node ids structured: the suffix no longer
takes (pytest-xdist issue #1386), so every grouped test became a test of its own and the
services' tests ran side by side on all workers, in collection order -- the Slurm and Ray
files sort near the end, so their long tests started last. Here the worker writes each
grouped test's group to a file (the controller collects nothing) and the controller's
scheduler reads it; nothing depends on node ids.

The order: the service tests first (each service's are a chain that cannot be split), then
the other tests longest first by tests/durations.txt (the tests it does not name keep their
collection order, after the ones it does), so no long test starts in the last minute. A
service's next test goes to the worker that asks next; a worker that holds a service's test
gets the shortest tests left (see _assign_work_unit).
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

# the outside services whose tests run one at a time (their pytest markers): the Slurm cluster
# (test_slurm.py and test_runners.py's slurm cases), the Ray head, the real agent CLIs (one
# HOME for all of them, one mock API)
SHARED_SERVICES = ("slurm", "ray", "realagents")
DURATIONS_FILE = Path(os.environ.get("DAGRUN_TEST_DURATIONS") or Path(__file__).resolve().parent / "durations.txt")
GROUPS_KEY = "dagrun_groups_file"       # workerinput: where the workers write the groups


def recorded_durations(path: Path = DURATIONS_FILE) -> dict[str, float]:
    """tests/durations.txt: `seconds node-id` lines (# comments); {} without the file."""
    out: dict[str, float] = {}
    try:
        text = path.read_text()
    except FileNotFoundError:
        return out
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        secs, _, nodeid = line.partition(" ")
        try:
            out[nodeid.strip()] = float(secs)
        except ValueError:
            continue
    return out


def service_of(item) -> str | None:
    """The outside service a test shares with others (its marker), or None."""
    for name in SHARED_SERVICES:
        if item.get_closest_marker(name) is not None:
            return name
    return None


def _groups_file(config) -> str:
    """Where the workers write {test: service} for the controller's scheduler (its basetemp)."""
    return str(config._tmp_path_factory.getbasetemp() / "xdist-service-groups.json")


# ---- the hooks (tests/conftest.py imports them; `-p xdist_schedule` loads them elsewhere)
@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node):
    """(xdist, in the controller) tell each worker where to write the service groups."""
    node.workerinput[GROUPS_KEY] = _groups_file(node.config)


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    """(xdist, in the controller) `--dist loadgroup`: the scheduler below."""
    if config.getvalue("dist") != "loadgroup":
        return None
    return make_scheduler(config, log, _groups_file(config))


def pytest_collection_modifyitems(config, items):
    """In an xdist worker of `--dist loadgroup`: the service tests first, the rest longest
    first, and the service of each grouped test written where the controller reads it.
    (Every worker sorts the same way: xdist checks that their collections are equal.)"""
    winput = getattr(config, "workerinput", None)
    if winput is None or not getattr(config.option, "loadgroup", False):
        return
    order(items, service_of)
    if winput.get(GROUPS_KEY):
        write_groups(winput[GROUPS_KEY], items, service_of)


def order(items: list, group_of) -> None:
    """Sort the collected items in place: the service groups' tests first (collection order
    within a group), then the rest longest first (recorded durations; unknown: 0, stable)."""
    durations = recorded_durations()
    items.sort(key=lambda it: (group_of(it) is None, -durations.get(it.nodeid, 0.0)))


def write_groups(path: str, items: list, group_of) -> None:
    """{node id: group} of the grouped items, published by rename (every worker writes the
    same content; the controller reads it once all workers have collected)."""
    doc = {it.nodeid: g for it in items if (g := group_of(it)) is not None}
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        json.dump(doc, f)
    os.replace(tmp, path)


def make_scheduler(config, log, groups_path: str):
    from xdist.scheduler.loadscope import LoadScopeScheduling

    class ServiceChainScheduling(LoadScopeScheduling):
        """LoadScopeScheduling with one test per unit, the units in collection order (which
        order() made), and the assigned tests of each service group on one worker at a time."""

        def __init__(self, config, log):
            super().__init__(config, log)
            self._groups: dict[str, str] | None = None
            self._busy: dict[str, tuple[object, set[str]]] = {}   # group -> (worker, its tests in flight)

        def _group(self, nodeid: str) -> str | None:
            if self._groups is None:
                try:
                    self._groups = json.loads(Path(groups_path).read_text())
                except (OSError, ValueError):
                    self._groups = {}
            g = self._groups.get(nodeid)
            if g is None and nodeid.rfind("@") > nodeid.rfind("]"):     # an older pytest's suffix
                g = nodeid.rsplit("@", 1)[1]
            return g

        def _split_scope(self, nodeid: str) -> str:
            return nodeid

        def _holds_service(self, node) -> bool:
            return any(worker is node for worker, _tests in self._busy.values())

        def _assign_work_unit(self, node) -> None:
            """In this order: the first test of a service with no test in flight; the next
            other test -- the shortest one left if this worker holds a service test, else
            the longest; the next test of a service whose tests in flight are this worker's
            (they run one after the other here). Nothing when only services busy on other
            workers are left: a completion reschedules this worker.

            Why the shortest: xdist runs a worker's test only once the next one is queued
            behind it, so the service's next test, given to this worker when its current
            one ends, waits for the test queued meanwhile -- a short one keeps the service's
            chain moving, while the long tests start on the workers that hold no service."""
            free = mine = None
            plains = []
            for scope in self.workqueue:
                g = self._group(scope)
                if g is None:
                    plains.append(scope)
                elif g not in self._busy:
                    free = free or scope
                elif self._busy[g][0] is node:
                    mine = mine or scope
            if free is not None:
                pick = free
            elif plains:
                pick = plains[-1] if self._holds_service(node) else plains[0]
            else:
                pick = mine
            if pick is None:
                return
            g = self._group(pick)
            if g is not None:
                self._busy.setdefault(g, (node, set()))[1].add(pick)
            work_unit = self.workqueue.pop(pick)
            self.assigned_work.setdefault(node, {})[pick] = work_unit
            node.send_runtest_some([self.registered_collections[node].index(pick)])

        def _done(self, nodeid: str) -> None:
            g = self._group(nodeid)
            if g is not None and g in self._busy:
                self._busy[g][1].discard(nodeid)
                if not self._busy[g][1]:
                    del self._busy[g]

        def mark_test_complete(self, node, item_index: int, duration: float = 0) -> None:
            nodeid = self.registered_collections[node][item_index]
            self._done(nodeid)
            self.assigned_work[node][nodeid][nodeid] = True
            self._reschedule(node)
            # a worker runs its queued test only once the next one arrives: a worker left
            # with one test or none, because only busy services' tests were left, gets one now
            for other in list(self.assigned_work):
                if other is not node and self._pending_of(self.assigned_work[other]) <= 1:
                    self._reschedule(other)

        def remove_node(self, node):
            for scope, unit in self.assigned_work.get(node, {}).items():
                if not all(unit.values()):
                    self._done(scope)
            return super().remove_node(node)

    return ServiceChainScheduling(config, log)
