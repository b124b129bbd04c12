"""The result cache: `cache: true` reuses the output of an identical earlier run."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from conftest import crash_step, events, run, write_plan

AGENT = 'echo "$DAGRUN_GOAL/$DAGRUN_TASK" >> {log}; echo "out of $DAGRUN_TASK: $(cksum)"'


def _tasks(a_prompt="alpha", c_prompt="gamma"):
    return [{"id": "a", "prompt": a_prompt}, {"id": "b", "prompt": "beta", "deps": ["a"]},
            {"id": "c", "prompt": c_prompt, "deps": ["a"]}, {"id": "d", "prompt": "delta"},
            {"id": "e", "prompt": "eps", "deps": ["b"]}]


def _ran(log: Path) -> list[str]:
    return sorted(log.read_text().split()) if log.exists() else []


@pytest.fixture
def world(tmp_path):
    log = tmp_path / "ran.log"
    return tmp_path / "home", log, {"agent": AGENT.format(log=log), "cache": True}


def _task(home, g, t) -> Path:
    return home / "goals" / g / "tasks" / t


def test_second_run_starts_no_agent_and_a_changed_upstream_reruns_exactly_its_dependents(tmp_path, world):
    home, log, dflt = world
    run("run", write_plan(tmp_path / "p", _tasks(), goal="one", defaults=dflt), home=home)
    assert _ran(log) == ["one/a", "one/b", "one/c", "one/d", "one/e"]
    # same plan under another goal, CRLF and trailing blanks in a prompt: nothing runs
    p2 = run("run", write_plan(tmp_path / "p", _tasks(c_prompt="gamma \r\n\r\n"), goal="two", defaults=dflt,
                               name="two.json"), home=home)
    assert _ran(log) == ["one/a", "one/b", "one/c", "one/d", "one/e"]
    for t in "abcde":
        assert (_task(home, "two", t) / "output").read_bytes() == (_task(home, "one", t) / "output").read_bytes()
        done = json.loads((_task(home, "two", t) / "done").read_text())
        assert done["cached"] is True and len(done["cache_key"]) == 64 and done["exit_code"] is None
    assert "cached=True" in p2.stdout
    ev = events(home, "two")
    assert [e["task"] for e in ev if e.get("status") == "running"] == []          # no agent started
    assert sum(1 for e in ev if e.get("status") == "done" and e.get("cached")) == 5
    # a changed root: it and everything that reads its output (transitively) run; d does not
    run("run", write_plan(tmp_path / "p", _tasks(a_prompt="ALPHA"), goal="three", defaults=dflt,
                          name="three.json"), home=home)
    assert [x for x in _ran(log) if x.startswith("three/")] == ["three/a", "three/b", "three/c", "three/e"]
    assert json.loads((_task(home, "three", "d") / "done").read_text())["cached"] is True
    st = run("status", "three", home=home).stdout
    assert "cached" in st


def test_key_covers_agent_check_and_context_limit_and_no_cache_bypasses(tmp_path, world):
    home, log, dflt = world
    one = [{"id": "a", "prompt": "x"}]
    run("run", write_plan(tmp_path / "p", one, goal="g1", defaults=dflt), home=home)
    for i, extra in enumerate([{"agent": dflt["agent"] + " # other"}, {"context_limit": 10}, {"check": ["true"]}]):
        run("run", write_plan(tmp_path / "p", one, goal=f"k{i}", defaults={**dflt, **extra}, name=f"k{i}.json"),
            home=home)
    assert _ran(log) == ["g1/a", "k0/a", "k1/a", "k2/a"]
    run("run", write_plan(tmp_path / "p", one, goal="nc", defaults=dflt, name="nc.json"), "--no-cache", home=home)
    assert "nc/a" in _ran(log)
    assert "cached" not in json.loads((_task(home, "nc", "a") / "done").read_text())
    off = {k: v for k, v in dflt.items() if k != "cache"}
    run("run", write_plan(tmp_path / "p", one, goal="off", defaults=off, name="off.json"), home=home)
    assert "off/a" in _ran(log)


def test_a_damaged_entry_is_a_miss_and_is_removed(tmp_path, world):
    home, log, dflt = world
    run("run", write_plan(tmp_path / "p", [{"id": "a", "prompt": "x"}], goal="g1", defaults=dflt), home=home)
    entries = json.loads(run("cache", "ls", "--json", home=home).stdout)["entries"]
    assert len(entries) == 1 and entries[0]["goal"] == "g1" and entries[0]["task"] == "a"
    out = home / "cache" / entries[0]["key"] / "output"
    out.write_text("tampered\n")
    run("run", write_plan(tmp_path / "p", [{"id": "a", "prompt": "x"}], goal="g2", defaults=dflt, name="g2.json"),
        home=home)
    assert _ran(log) == ["g1/a", "g2/a"]
    assert (_task(home, "g2", "a") / "output").read_text().startswith("out of a")
    assert (home / "cache" / entries[0]["key"] / "output").read_text().startswith("out of a")   # stored anew


def test_cache_ls_rm_gc(tmp_path, world):
    home, log, dflt = world
    run("run", write_plan(tmp_path / "p", [{"id": "a", "prompt": "x"}, {"id": "b", "prompt": "y"}], goal="g",
                          defaults=dflt), home=home)
    keys = [e["key"] for e in json.loads(run("cache", "ls", "--json", home=home).stdout)["entries"]]
    assert len(keys) == 2
    assert "g/a" in run("cache", "ls", home=home).stdout
    assert run("cache", "rm", keys[0][:12], home=home).stdout.strip() == "removed 1 cache entry"
    assert run("cache", "rm", "zz", home=home, check=2).stderr.startswith("dagrun: no cache entry matches 'zz'")
    assert run("cache", "rm", home=home, check=2).stderr.startswith("dagrun: give KEY... or --all")
    # a leftover of a writer that died, and an entry not used for long
    (home / "cache" / f".{'0' * 64}.999999.tmp").mkdir()
    old = home / "cache" / keys[1] / "meta.json"
    os.utime(old, (1, 1))
    r = json.loads(run("cache", "gc", "--older-than", "1d", "--json", home=home).stdout)
    assert r == {"removed": [keys[1]], "leftovers": 1}
    assert json.loads(run("cache", "ls", "--json", home=home).stdout)["entries"] == []
    assert run("cache", "gc", "--older-than", "soon", home=home, check=2).returncode == 2


def test_crash_around_the_cache_publish_leaves_a_consistent_state(tmp_path, world):
    """SIGKILL the engine right before and right after the steps of storing a result:
    the task is done exactly once, a later identical task either hits a whole entry or runs
    its agent, and leftovers of a half-written entry are never served and are swept by gc."""
    home0, log, dflt = world
    plan = write_plan(tmp_path / "p", [{"id": "a", "prompt": "x"}], goal="g", defaults=dflt)
    trace = tmp_path / "trace"
    run("run", plan, home=tmp_path / "probe", env={"DAGRUN_STEP_TRACE": str(trace)})
    labels = [line.split(" ", 1)[1] for line in trace.read_text().splitlines()]
    steps = sorted({k for k, label in enumerate(labels, 1) if "cache" in label and ("store" in label or "/cache/" in label)})
    assert len(steps) >= 5, trace.read_text()
    # every gap around these steps once: before each of them, and after those whose next step
    # is not one of them -- "after k" and "before k+1" leave the same files (nothing of this
    # process happens in between: the clean run's trace numbers every step of every thread)
    points = [(k, "") for k in steps] + [(k, ":after") for k in steps if k + 1 not in steps]
    seen = set()
    for k, when in points:
        home = tmp_path / f"h{k}{when.strip(':')}"
        log.unlink(missing_ok=True)
        # the step named by its label (crash_step): its number differs from run to run
        crash = crash_step(labels, k, tmp_path / "probe", after=when == ":after")
        r = run("run", plan, home=home, check=False, env=crash)
        assert r.returncode in (0, -9, 137), r
        run("run", plan, home=home)                                  # resume: ends done
        assert (_task(home, "g", "a") / "done").exists()
        assert _ran(log) == ["g/a"]                                  # the agent ran once: done is final
        run("cache", "gc", "--older-than", "1000d", home=home)         # sweeps a dead writer's folder
        assert not [n for n in os.listdir(home / "cache") if n.startswith(".")] if (home / "cache").exists() else True
        run("run", write_plan(tmp_path / "p", [{"id": "a", "prompt": "x"}], goal="g2", defaults=dflt,
                              name="g2.json"), home=home)
        done2 = json.loads((_task(home, "g2", "a") / "done").read_text())
        if done2.get("cached"):       # a whole entry: the very output of g/a
            assert (_task(home, "g2", "a") / "output").read_bytes() == (_task(home, "g", "a") / "output").read_bytes()
            assert _ran(log) == ["g/a"]
        else:                         # no entry (the crash came before its rename): the agent ran
            assert _ran(log) == ["g/a", "g2/a"]
        seen.add(bool(done2.get("cached")))
    assert seen == {True, False}          # crashes both before and after the entry was published


def test_bad_cache_value_is_a_plan_error(tmp_path):
    p = tmp_path / "dag.json"
    p.write_text('{"goal": "b", "tasks": [{"id": "a", "prompt": "x", "agent": "cat", "cache": "yes"}]}')
    r = run("validate", p, home=tmp_path / "home", check=2)
    assert "tasks[0].cache: expected true or false, got a string" in r.stderr
