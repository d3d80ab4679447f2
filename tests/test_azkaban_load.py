"""Reading Azkaban projects: Flow 1.0 and 2.0 rules, the model's helpers, every validation error."""

from __future__ import annotations

from pathlib import Path

import pytest

from airflow_ml_provider.azkaban.flow1 import split_dependencies
from airflow_ml_provider.azkaban.loader import load_project
from airflow_ml_provider.azkaban.model import (
    ERROR,
    WARNING,
    CycleError,
    Edge,
    Flow,
    Kind,
    Node,
    Problem,
    Project,
    embedded_flow_params,
    resolve_static_props,
)
from airflow_ml_provider.azkaban.validate import find_cycles, parse_mem


def write(root: Path, files: dict[str, str | bytes]) -> Path:
    for rel, content in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            p.write_bytes(content)
        else:
            p.write_text(content, encoding="utf-8")
    return root


def kinds(project: Project, severity: str = ERROR) -> list[str]:
    return [p.kind for p in project.problems if p.severity == severity]


def only(project: Project, kind: str) -> Problem:
    found = [p for p in project.problems if p.kind == kind]
    assert len(found) == 1, [str(p) for p in project.problems]
    return found[0]


# =============================================================================================
# Flow 1.0
# =============================================================================================


def test_properties_chain_per_directory(tmp_path):
    proj = write(
        tmp_path / "p",
        {
            "b.properties": "y=from-b\nretries=2\n",
            "a.properties": "x=from-a\ny=from-a\n",
            "sub/c.properties": "x=from-c\nz=from-c\nenv.HOME_DIR=/data\n",
            "sub/job.job": "type=command\ncommand=echo ${x}\nz=from-job\n",
            "other/d.properties": "w=from-d\n",
            "other/top.job": "type=noop\ndependencies=job\n",
        },
    )
    p = load_project(proj)
    assert p.errors == []
    job = p.jobs["job"]
    # sorted per directory, the last one the parent of the jobs and subdirectories
    assert [link.file for link in job.props_chain] == ["a.properties", "b.properties", "sub/c.properties"]
    assert job.inherited_props == {
        "x": "from-c",
        "y": "from-b",
        "retries": "2",
        "z": "from-c",
        "env.HOME_DIR": "/data",
    }
    assert job.props == {"type": "command", "command": "echo ${x}", "z": "from-job"}
    assert job.get("retries") == "2" and job.get("z") == "from-job"
    # a sibling directory's .properties are not inherited
    assert "w" not in job.inherited_props
    assert p.jobs["top"].inherited_props["w"] == "from-d"
    assert p.properties_files == ["a.properties", "b.properties", "other/d.properties", "sub/c.properties"]
    # precedence: chain < flow params < outputs < job file
    resolved = resolve_static_props(job, {"y": "flow", "z": "flow", "x": "flow"}, {"x": "out", "z": "out"})
    assert (resolved["y"], resolved["x"], resolved["z"], resolved["retries"]) == (
        "flow",
        "out",
        "from-job",
        "2",
    )


def test_type_and_dependencies_may_be_inherited(tmp_path):
    proj = write(
        tmp_path / "p",
        {
            "common.properties": "type=command\n",
            "a.job": "command=echo a\n",
            "b.job": "command=echo b\ndependencies=a\n",
        },
    )
    p = load_project(proj)
    assert p.errors == []
    assert p.jobs["a"].type == "command" and "type" not in p.jobs["a"].props
    assert list(p.flows) == ["b"]


def test_flows_are_final_jobs_plus_root_node(tmp_path):
    proj = write(
        tmp_path / "p",
        {
            "a.job": "type=noop\n",
            "b.job": "type=noop\ndependencies=a\nroot.node=true\n",
            "c.job": "type=noop\ndependencies= a , b ,, b\n",
            "d.job": "type=noop\n",
        },
    )
    p = load_project(proj)
    assert p.errors == []
    assert sorted(p.flows) == ["b", "c", "d"]
    c = p.flows["c"]
    assert c.node("c").depends_on == ["a", "b"]
    assert list(c.nodes) == ["a", "b", "c"]  # dependencies first
    assert c.edges == [Edge("a", "b"), Edge("a", "c"), Edge("b", "c")]
    assert (c.node_count, c.edge_count) == (3, 3)
    assert c.root == "c" and c.source_file == "c.job"
    assert list(p.flows["b"].nodes) == ["a", "b"]
    assert p.counts().jobs == 4


def test_embedded_flows_to_any_depth(tmp_path):
    proj = write(
        tmp_path / "p",
        {
            "leaf1.job": "type=command\ncommand=echo 1\n",
            "leaf2.job": "type=command\ncommand=echo 2\ndependencies=leaf1\n",
            "mid_start.job": "type=noop\n",
            "mid_embed.job": "type=flow\nflow.name=leaf2\ndependencies=mid_start\n",
            "mid.job": "type=noop\ndependencies=mid_embed\n",
            "top_embed.job": "type=flow\nflow.name=mid\n",
            "top.job": "type=noop\ndependencies=top_embed\n",
        },
    )
    p = load_project(proj)
    assert p.errors == []
    assert sorted(p.flows) == ["leaf2", "mid", "top"]  # a flow used via flow.name is a DAG too
    top = p.flows["top"]
    assert top.node("top_embed").embedded_flow is p.flows["mid"]
    assert top.task_ids() == [
        "top_embed.mid_start",
        "top_embed.mid_embed.leaf1",
        "top_embed.mid_embed.leaf2",
        "top_embed.mid",
        "top",
    ]
    assert top.task_count == 5
    paths = [path for path, _ in top.embedded_flows()]
    assert paths == [("top_embed",), ("top_embed", "mid_embed")]


def test_flow1_errors_name_file_and_problem(tmp_path):
    proj = write(
        tmp_path / "p",
        {
            "notype.job": "command=echo\n",
            "self.job": "type=noop\ndependencies=self\n",
            "undef.job": "type=noop\n# comment\ndependencies=ghost\n",
            "x/dup.job": "type=noop\n",
            "y/dup.job": "type=noop\n",
        },
    )
    p = load_project(proj)
    assert sorted(kinds(p)) == sorted(
        [Kind.MISSING_TYPE, Kind.SELF_DEPENDENCY, Kind.UNDEFINED_DEPENDENCY, Kind.DUPLICATE_NODE]
    )
    missing = only(p, Kind.MISSING_TYPE)
    assert missing.file == "notype.job" and "'notype' has no type" in missing.message
    selfdep = only(p, Kind.SELF_DEPENDENCY)
    assert selfdep.file == "self.job" and selfdep.line == 2 and "depends on itself" in selfdep.message
    undef = only(p, Kind.UNDEFINED_DEPENDENCY)
    assert str(undef) == (
        "undef.job:3: error: job 'undef' depends on 'ghost', which is not defined (no ghost.job)"
    )
    dup = only(p, Kind.DUPLICATE_NODE)
    assert "x/dup.job" in dup.message and "y/dup.job" in dup.message and dup.file == "y/dup.job"
    assert not p.flow_ok("undef") and not p.flow_ok("notype")
    assert "self" not in p.flows  # its only dependent is itself, so it is no flow's final job (as in Azkaban)


def test_flow1_cycles_with_path(tmp_path):
    proj = write(
        tmp_path / "p",
        {
            "a.job": "type=noop\ndependencies=c\n",
            "b.job": "type=noop\ndependencies=a\n",
            "c.job": "type=noop\ndependencies=b\n",
            "end.job": "type=noop\ndependencies=a\n",
            # a cycle no flow reaches (every job has a dependent) is still reported
            "p.job": "type=noop\ndependencies=q\n",
            "q.job": "type=noop\ndependencies=p\n",
            "fine.job": "type=noop\n",
        },
    )
    p = load_project(proj)
    cycles = [e for e in p.errors if e.kind == Kind.CYCLE]
    assert [c.message for c in cycles] == [
        "dependency cycle: a -> c -> b -> a (each job depends on the next)",
        "dependency cycle: p -> q -> p (each job depends on the next)",
    ]
    assert cycles[0].file == "a.job" and cycles[0].line == 2
    assert not p.flow_ok("end")
    assert p.flow_ok("fine")
    with pytest.raises(CycleError, match="cycle: "):
        p.flows["end"].topological_order()


def test_flow1_embedded_flow_problems(tmp_path):
    proj = write(
        tmp_path / "p",
        {
            "noname.job": "type=flow\n",
            "unknown.job": "type=flow\nflow.name=nosuch\n",
            "inner.job": "type=noop\n",
            "inner2.job": "type=noop\ndependencies=inner\n",
            "notaflow.job": "type=flow\nflow.name=inner\n",
        },
    )
    p = load_project(proj)
    msgs = sorted(e.message for e in p.errors)
    assert all(e.kind == Kind.EMBEDDED_FLOW for e in p.errors)
    assert msgs == [
        "job 'noname' has type=flow but no flow.name",
        (
            "job 'notaflow' embeds flow.name='inner', but no such flow exists "
            "('inner' is a job other jobs depend on, so it is not a flow)"
        ),
        "job 'unknown' embeds flow.name='nosuch', but no such flow exists",
    ]
    assert p.flow_ok("inner2")


def test_flow1_embedded_cycle_is_cut(tmp_path):
    proj = write(
        tmp_path / "p",
        {"f.job": "type=flow\nflow.name=g\n", "g.job": "type=flow\nflow.name=f\n"},
    )
    p = load_project(proj)
    assert sorted(e.message.split(" (")[0] for e in p.errors) == [
        "embedded flow cycle: f -> g -> f",
        "embedded flow cycle: g -> f -> g",
    ]
    # the model stays finite
    for flow in p.flows.values():
        assert len(list(flow.walk())) < 10


def test_flow1_conditions_are_validated(tmp_path):
    proj = write(
        tmp_path / "p",
        {
            "a.job": "type=noop\n",
            "b.job": "type=noop\ndependencies=a\ncondition=${a:x} == 'y' && one_success\n",
            "c.job": "type=noop\ndependencies=b\ncondition=${nope:x} == 1\n",
            "d.job": "type=noop\ndependencies=a\ncondition=all_done || one_failed\n",
            "e.job": "type=noop\ndependencies=c,d\n",
        },
    )
    p = load_project(proj)
    errs = [e for e in p.errors if e.kind == Kind.INVALID_CONDITION]
    assert [(e.node, e.file, e.line) for e in errs] == [("c", "c.job", 3), ("d", "d.job", 3)]
    assert "'nope' doesn't exist in the flow" in errs[0].message
    assert "more than one condition-on-job-status macro" in errs[1].message
    assert p.flows["e"].node("b").condition == "${a:x} == 'y' && one_success"


def test_flow1_bad_escape_is_reported_with_line(tmp_path):
    proj = write(tmp_path / "p", {"a.job": "type=command\ncommand=echo \\u12x4\n"})
    p = load_project(proj)
    err = only(p, Kind.PROPERTIES)
    assert (err.file, err.line) == ("a.job", 2) and "malformed \\uXXXX" in err.message


def test_flow1_reads_iso_8859_1_and_keeps_order(tmp_path):
    proj = write(tmp_path / "p", {"a.job": b"type=command\ncommand=echo caf\xe9\nenv.B=2\nenv.A=1\n"})
    p = load_project(proj)
    a = p.jobs["a"]
    assert a.props["command"] == "echo café"
    assert list(a.config) == ["command", "env.B", "env.A"]
    assert a.key_lines == {"type": 1, "command": 2, "env.B": 3, "env.A": 4}


def test_memory_limits_are_warnings(tmp_path):
    proj = write(
        tmp_path / "p",
        {
            "jvm.properties": "Xmx=4G\n",
            "a.job": "type=javaprocess\nXms=512M\n",
            "b.job": "type=noop\nXms=${mem}\n",
        },
    )
    p = load_project(proj)
    assert p.errors == []
    assert sorted((w.kind, w.node) for w in p.warnings) == [(Kind.JOB_PROPS, "a"), (Kind.JOB_PROPS, "b")]
    w = p.warnings[0]
    assert "Xmx value 4G" in w.message and "max Xmx = 2G" in w.message  # inherited from jvm.properties
    assert not any("Xms" in w.message for w in p.warnings)  # 512M is under 1G; ${mem} is not checked
    assert load_project(proj, max_xmx="8G").warnings == []


def test_split_dependencies():
    assert split_dependencies(" a ,b,, c ,a") == ["a", "b", "c"]
    assert split_dependencies("") == [] and split_dependencies(None) == []


def test_flow_files_without_project_file_warn(tmp_path):
    proj = write(tmp_path / "p", {"x.flow": "nodes:\n  - name: a\n    type: noop\n"})
    p = load_project(proj)
    assert p.flow_version == "1.0" and p.flows == {}
    assert {w.kind for w in p.warnings} == {Kind.FLOW_VERSION, Kind.NO_FLOWS}
    assert "no .project file" in only(p, Kind.FLOW_VERSION).message


# =============================================================================================
# Flow 2.0
# =============================================================================================

PROJECT = "azkaban-flow-version: 2.0\n"


def test_flow2_reads_config_nodes_conditions_and_lines(tmp_path):
    flow = """\
config:
  team: ml
  retries: 3
nodes:
  - name: end
    type: noop
    dependsOn: [prep, sub]
    condition: one_success

  - name: prep
    type: command
    config:
      command: echo hi
      enabled: true
      ratio: 1.5
      empty:
      when: 2024-01-02

  - name: sub
    type: flow
    dependsOn:
      - prep
    config:
      level: one
    nodes:
      - name: inner
        type: command
        config:
          command: echo inner
"""
    proj = write(tmp_path / "p", {"p.project": PROJECT, "f.flow": flow, "ignored.properties": "team=other\n"})
    p = load_project(proj)
    assert p.errors == [] and p.flow_version == "2.0"
    f = p.flows["f"]
    assert f.flow_props == {"team": "ml", "retries": "3"}
    assert list(f.nodes) == ["end", "prep", "sub"]
    assert [f.node(n).line for n in f.nodes] == [5, 10, 19]
    prep = f.node("prep")
    assert prep.props == {
        "command": "echo hi",
        "enabled": "true",
        "ratio": "1.5",
        "empty": "",
        "when": "2024-01-02",
    }
    assert prep.inherited_props == {"team": "ml", "retries": "3"}  # .properties are ignored in 2.0
    sub = f.node("sub")
    assert sub.is_flow and sub.depends_on == ["prep"] and sub.props == {"level": "one"}
    inner = sub.embedded_flow.node("inner")
    assert inner.inherited_props == {"team": "ml", "retries": "3", "level": "one"}
    assert f.node("end").condition == "one_success"
    assert f.task_ids() == ["end", "prep", "sub.inner"]
    assert f.topological_order() == ["prep", "sub", "end"]
    assert p.resource_files == ["ignored.properties"]


def test_flow2_deep_nesting_names(tmp_path):
    def level(n: int, indent: str) -> str:
        if n == 0:
            return f"{indent}- name: job\n{indent}  type: noop\n"
        return f"{indent}- name: f{n}\n{indent}  type: flow\n{indent}  nodes:\n" + level(
            n - 1, indent + "    "
        )

    proj = write(tmp_path / "p", {"p.project": PROJECT, "top.flow": "nodes:\n" + level(4, "  ")})
    p = load_project(proj)
    assert p.errors == []
    assert list(p.azkaban_flows()) == ["top", "top:f4", "top:f4:f3", "top:f4:f3:f2", "top:f4:f3:f2:f1"]
    assert p.flows["top"].task_ids() == ["f4.f3.f2.f1.job"]


@pytest.mark.parametrize(
    ("flow", "kind", "needle", "line"),
    [
        ("nodes:\n  - name: a\n    type: noop\n   bad: [\n", Kind.INVALID_YAML, "invalid YAML", 4),
        (
            "nodes:\n  - name: a\n    type: noop\n    dependson: [b]\n",
            Kind.INVALID_FLOW,
            "unknown key 'dependson'",
            2,
        ),
        ("nodes:\n  - name: a\n    config: {command: x}\n", Kind.MISSING_TYPE, "has no type", 2),
        (
            "nodes:\n  - name: a\n    type: noop\n    dependsOn: [a]\n",
            Kind.SELF_DEPENDENCY,
            "depends on itself",
            2,
        ),
        ("nodes:\n  - name: ROOT\n    type: noop\n", Kind.RESERVED_NAME, "reserved", 2),
        ("nodes:\n  - type: noop\n", Kind.MISSING_NAME, "no 'name'", 2),
        ("nodes:\n  - name: a\n    type: noop\n  - name: a\n    type: noop\n", Kind.DUPLICATE_NODE, "'a'", 4),
        ("nodes:\n  - name: a\n    type: noop\n    dependsOn: [zz]\n", Kind.UNDEFINED_DEPENDENCY, "'zz'", 2),
        ("nodes: hello\n", Kind.INVALID_FLOW, "'nodes' must be a list", 1),
        ("- a\n- b\n", Kind.INVALID_FLOW, "must be a mapping", 1),
        ("", Kind.INVALID_FLOW, "empty", None),
        ("config: {a: 1}\n", Kind.INVALID_FLOW, "no 'nodes:'", 1),
        (
            "nodes:\n  - name: a\n    type: noop\n    dependsOn: [b]\n  - name: b\n    type: noop\n    dependsOn: [a]\n",
            Kind.CYCLE,
            "a -> b -> a",
            2,
        ),
        (
            "nodes:\n  - name: a\n    type: noop\n    condition: ${a:x} == 1\n",
            Kind.INVALID_CONDITION,
            "refers to the job itself",
            2,
        ),
    ],
)
def test_flow2_errors(tmp_path, flow, kind, needle, line):
    proj = write(
        tmp_path / "p",
        {"p.project": PROJECT, "bad.flow": flow, "good.flow": "nodes:\n  - {name: x, type: noop}\n"},
    )
    p = load_project(proj)
    err = only(p, kind)
    assert err.severity == ERROR and err.file == "bad.flow" and err.line == line
    assert needle in err.message, err.message
    assert err.flow == "bad"
    assert not p.flow_ok("bad")
    assert p.flow_ok("good")


def test_flow2_errors_inside_embedded_flows(tmp_path):
    flow = """\
nodes:
  - name: outer
    type: flow
    nodes:
      - name: a
        type: noop
        dependsOn: [missing]
      - name: b
"""
    p = load_project(write(tmp_path / "p", {"p.project": PROJECT, "f.flow": flow}))
    assert sorted((e.kind, e.node) for e in p.errors) == [
        (Kind.MISSING_TYPE, "outer.b"),
        (Kind.UNDEFINED_DEPENDENCY, "outer.a"),
    ]
    assert "flow f:outer" in only(p, Kind.UNDEFINED_DEPENDENCY).message


def test_project_file_rules(tmp_path):
    good = "nodes:\n  - {name: x, type: noop}\n"
    for version, ok in [("2.0", True), ("'2.0'", True), ("1.0", False), ("2", False), ("3.0", False)]:
        proj = write(
            tmp_path / f"v{version.strip(chr(39))}",
            {"p.project": f"azkaban-flow-version: {version}\n", "f.flow": good},
        )
        p = load_project(proj)
        assert p.flow_ok("f") is ok, (version, [str(e) for e in p.problems])
        if not ok:
            err = only(p, Kind.FLOW_VERSION)
            assert err.file == "p.project" and "invalid azkaban-flow-version" in err.message
    p = load_project(
        write(tmp_path / "bad-yaml", {"p.project": "azkaban-flow-version: [2.0\n", "f.flow": good})
    )
    assert only(p, Kind.INVALID_YAML).file == "p.project"
    p = load_project(
        write(tmp_path / "two", {"a/p.project": PROJECT, "b/q.project": PROJECT, "f.flow": good})
    )
    err = only(p, Kind.PROJECT_FILE)
    assert "a/p.project" in err.message and "b/q.project" in err.message
    assert not p.flow_ok("f")


def test_duplicate_flow_names_across_directories(tmp_path):
    good = "nodes:\n  - {name: x, type: noop}\n"
    p = load_project(write(tmp_path / "p", {"p.project": PROJECT, "f.flow": good, "sub/f.flow": good}))
    err = only(p, Kind.DUPLICATE_FLOW)
    assert err.file == "sub/f.flow" and "also defined in f.flow" in err.message


def test_no_flows_is_a_warning(tmp_path):
    p = load_project(write(tmp_path / "p", {"p.project": PROJECT}))
    assert p.errors == [] and kinds(p, WARNING) == [Kind.NO_FLOWS]


def test_trigger_rules(tmp_path):
    def flow(trigger: str) -> str:
        return "trigger:\n" + trigger + "nodes:\n  - {name: x, type: noop}\n"

    files = {
        "p.project": PROJECT,
        "ok.flow": flow("  schedule:\n    type: cron\n    value: 0 30 2 ? * MON-FRI\n"),
        "secs.flow": flow("  schedule: {type: cron, value: '*/5 * * ? * *'}\n"),
        "badcron.flow": flow("  schedule: {type: cron, value: '0 0 25 ? * *'}\n"),
        "type.flow": flow("  schedule: {type: interval, value: '0 0 1 ? * *'}\n"),
        "wait.flow": flow(
            "  maxWaitMins: 0\n  schedule: {type: cron, value: '0 0 1 ? * *'}\n"
            "  triggerDependencies:\n    - {name: d, type: t, params: {a: 1}}\n"
        ),
        "dupdep.flow": flow(
            "  maxWaitMins: 10\n  schedule: {type: cron, value: '0 0 1 ? * *'}\n"
            "  triggerDependencies:\n    - {name: d, type: t, params: {a: 1}}\n    - {name: d, type: u, params: {a: 2}}\n"
        ),
    }
    p = load_project(write(tmp_path / "p", files))
    assert p.flow_ok("ok") and p.flows["ok"].trigger.cron == "0 30 2 ? * MON-FRI"
    expected = {
        "secs": "seconds field",
        "badcron": "hours",
        "type": "must be 'cron'",
        "wait": "at least 1 minute",
        "dupdep": "duplicate trigger dependency name 'd'",
    }
    for name, needle in expected.items():
        errs = [e for e in p.flow_problems(name) if e.is_error]
        assert errs and all(e.kind == Kind.INVALID_TRIGGER and e.file == f"{name}.flow" for e in errs)
        assert any(needle in e.message for e in errs), (name, [e.message for e in errs])


# =============================================================================================
# model helpers
# =============================================================================================


def _flow(edges: dict[str, list[str]]) -> Flow:
    return Flow("f", nodes={n: Node(n, "noop", depends_on=list(d)) for n, d in edges.items()})


def test_topological_order_is_stable():
    f = _flow({"z": [], "y": ["z"], "a": [], "b": ["a", "z"], "c": ["b", "y"]})
    assert f.topological_order() == ["z", "y", "a", "b", "c"]
    assert f.roots() == ["z", "a"] and f.leaves() == ["c"]
    assert f.upstream("b") == ["a", "z"] and f.downstream("z") == ["y", "b"]
    assert f.ancestors("c") == {"a", "b", "y", "z"} and f.descendants("a") == {"b", "c"}


def test_find_cycles():
    assert find_cycles({"a": ["b"], "b": ["c"], "c": ["a"], "d": ["d"], "e": []}) == [
        ["a", "b", "c", "a"],
        ["d", "d"],
    ]
    big = {str(i): [str(i + 1)] for i in range(20000)}
    big["20000"] = []
    assert find_cycles(big) == []  # iterative: no recursion limit
    big["20000"] = ["0"]
    (cycle,) = find_cycles(big)
    assert len(cycle) == 20002 and cycle[0] == cycle[-1] == "0"


def test_cycle_error():
    f = _flow({"a": ["b"], "b": ["a"], "c": []})
    assert f.find_cycle() == ["a", "b", "a"]
    with pytest.raises(CycleError) as err:
        f.topological_order()
    assert err.value.cycle == ["a", "b", "a"] and str(err.value) == "cycle: a -> b -> a in flow f"


def test_problem_rendering():
    p = Problem(Kind.CYCLE, "x.flow", "dependency cycle: a -> b -> a", flow="x", node="a", line=7)
    assert str(p) == "x.flow:7: error: dependency cycle: a -> b -> a"
    assert p.to_dict() == {
        "kind": "cycle",
        "severity": "error",
        "file": "x.flow",
        "line": 7,
        "flow": "x",
        "node": "a",
        "message": "dependency cycle: a -> b -> a",
    }
    assert str(Problem(Kind.NO_FLOWS, "", "none", severity=WARNING)) == "<project>: warning: none"


def test_embedded_flow_params_and_precedence():
    chain_node = Node(
        "outer", "flow", props={"p": "outer", "q": "outer"}, inherited_props={"p": "chain", "r": "chain"}
    )
    params = embedded_flow_params(chain_node, {"q": "flow", "s": "flow"})
    assert params == {"p": "outer", "r": "chain", "q": "outer", "s": "flow"}
    inner = Node("inner", "noop", props={"t": "job"}, inherited_props={"s": "chain", "t": "chain"})
    resolved = resolve_static_props(inner, params, {"p": "parent-output"})
    assert resolved == {"s": "flow", "t": "job", "p": "parent-output", "r": "chain", "q": "outer"}


def test_parse_mem():
    assert parse_mem("512") == 512 and parse_mem("1k") == 1024 and parse_mem("2G") == 2 << 30
    assert parse_mem("1.5G") is None and parse_mem("lots") is None


def test_directory_project_context_manager_is_harmless(tmp_path):
    proj = write(tmp_path / "p", {"a.job": "type=noop\n"})
    with load_project(proj) as p:
        assert p.root == proj.resolve()
    assert (proj / "a.job").exists()  # close() never touches a directory source


def test_yaml_alias_bomb_and_self_reference_are_refused(tmp_path):
    lines = ["l0: &l0 [x, x, x, x, x, x, x, x, x, x]"]
    for i in range(1, 30):  # 10 * 3**29 values once aliases are followed
        lines.append(f"l{i}: &l{i} [*l{i - 1}, *l{i - 1}, *l{i - 1}]")
    bomb = "\n".join(lines) + "\nnodes:\n  - name: j\n    type: noop\n    config:\n      big: *l29\n"
    loop = "nodes: &n\n  - name: j\n    type: noop\n    config:\n      me: *n\n"
    fine = "anchors: &c {k: v}\nnodes:\n  - name: j\n    type: noop\n    config: *c\n"
    p = load_project(
        write(tmp_path / "p", {"p.project": PROJECT, "bomb.flow": bomb, "loop.flow": loop, "fine.flow": fine})
    )
    errs = {e.file: e for e in p.errors if e.kind == Kind.INVALID_YAML}
    assert set(errs) == {"bomb.flow", "loop.flow"}
    assert "aliases expand past" in errs["bomb.flow"].message
    assert "recursive" in errs["loop.flow"].message
    assert p.flows["fine"].node("j").props == {"k": "v"}
