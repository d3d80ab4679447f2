"""Conformance: Azkaban's own test projects, read through AZKABAN_CORPUS.

The expected numbers below are copied from the corpus's EXPECTED.md (what Azkaban's
DirectoryFlowLoader / DirectoryYamlFlowLoader report); they are the oracle.
"""

from __future__ import annotations

import os
import shutil
import tarfile
import time
from pathlib import Path

import pytest

from airflow_ml_provider.azkaban.loader import load_project
from airflow_ml_provider.azkaban.model import Kind, Project, resolve_static_props
from tests.fixtures.services import require_service

# --------------------------------------------------------------------------------------------
# fixtures
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def corpus() -> Path:
    value = os.environ.get("AZKABAN_CORPUS", "")
    require_service(
        bool(value) and Path(value, "EXPECTED.md").is_file(),
        "AZKABAN_CORPUS is not set to the Azkaban conformance corpus (a directory holding EXPECTED.md, "
        "e.g. ../shared/azkaban-corpus); .ci/run sets it",
    )
    return Path(value)


def data(corpus: Path, name: str) -> Path:
    return corpus / "execution-test-data" / name


def load(corpus: Path, name: str) -> Project:
    return load_project(data(corpus, name))


def errors_of(project: Project, kind: str | None = None):
    return [p for p in project.errors if kind is None or p.kind == kind]


# --------------------------------------------------------------------------------------------
# Flow 1.0 (EXPECTED.md: errors / flows / jobs / .properties files)
# --------------------------------------------------------------------------------------------


def test_exectest1(corpus):
    p = load(corpus, "exectest1")
    assert p.flow_version == "1.0"
    c = p.counts()
    assert (c.errors, c.flows, c.jobs, c.properties_files) == (0, 5, 14, 2)
    # the final jobs nobody depends on are the flows
    assert set(p.flows) == {"job-pass", "job-retry", "job-retry-fail", "job10", "job2d"}
    # old JSON .flow files are not read in 1.0; they are resources like any other file
    assert "exec1.flow" in p.resource_files
    assert not any(r.endswith(".job") for r in p.resource_files)
    # the .properties chain: prop1 then prop2 (sorted), prop2 wins
    job1 = p.jobs["job1"]
    assert [link.file for link in job1.props_chain] == ["prop1.properties", "prop2.properties"]
    assert job1.inherited_props == {"a": "1", "c": "0", "b": "2"}
    assert p.jobs["job-retry"].get("retries") == "3"
    order = p.flows["job10"].topological_order()
    assert order.index("job1") < order.index("job2") < order.index("job5") < order.index("job10")


def test_embedded(corpus):
    p = load(corpus, "embedded")
    c = p.counts()
    assert (c.errors, c.flows, c.jobs) == (0, 2, 9)
    assert set(p.flows) == {"innerFlow", "jobe"}  # a flow used through flow.name is a flow too
    jobe = p.flows["jobe"]
    for embedding in ("jobb", "jobc", "jobd"):
        node = jobe.node(embedding)
        assert node.is_flow and node.flow_name == "innerFlow"
        assert node.embedded_flow is p.flows["innerFlow"]
    assert "jobb.innerJobA" in jobe.task_ids()
    assert len(jobe.task_ids()) == 2 + 3 * 4  # joba, jobe + three embedded copies of innerFlow


def test_embedded_bad_reports_three_embedded_cycles(corpus):
    p = load(corpus, "embedded_bad")
    errs = errors_of(p)
    assert len(errs) == 3
    assert all(e.kind == Kind.CYCLE for e in errs)
    messages = {e.flow: e.message for e in errs}
    assert "jobe -> innerFlow -> jobe" in messages["jobe"]
    assert "innerFlow -> jobe -> innerFlow" in messages["innerFlow"]
    assert "selfreference -> selfreference" in messages["selfreference"]
    assert {e.file for e in errs} == {"jobe.job", "innerFlow.job", "selfreference.job"}
    assert not any(p.flow_ok(name) for name in p.flows)


@pytest.fixture(scope="module")
def massive_dir(corpus, tmp_path_factory) -> Path:
    """The massive-flows tarball extracted to a temporary directory (once per module)."""
    dest = tmp_path_factory.mktemp("massive")
    with tarfile.open(data(corpus, "massive-flows") / "massive-flows.tar.bz2") as tf:
        tf.extractall(dest, filter="data")
    return dest


def test_massive_flows_directory(massive_dir):
    start = time.perf_counter()
    p = load_project(massive_dir)
    elapsed = time.perf_counter() - start
    c = p.counts()
    assert (c.errors, c.flows, c.jobs, c.properties_files) == (0, 185, 7121, 0)
    assert elapsed < 5.0, f"loading 7,121 jobs took {elapsed:.2f}s"
    # every flow is a DAG whose final job carries its name
    for name, flow in p.flows.items():
        assert flow.topological_order()[-1] == name
    assert sum(f.node_count for f in p.flows.values()) == 7121


def test_massive_flows_tarball_loads_directly(corpus, massive_dir):
    archive = data(corpus, "massive-flows") / "massive-flows.tar.bz2"
    start = time.perf_counter()
    with load_project(archive) as q:
        elapsed = time.perf_counter() - start
        c = q.counts()
        assert (c.errors, c.flows, c.jobs, c.properties_files) == (0, 185, 7121, 0)
        assert elapsed < 8.0, f"loading the tarball took {elapsed:.2f}s"
        extracted = q.root
        assert extracted is not None and extracted.is_dir()
        d = load_project(massive_dir)
        assert {n: [e for e in f.edges] for n, f in q.flows.items()} == {
            n: [e for e in f.edges] for n, f in d.flows.items()
        }
    assert not extracted.exists()  # the private temp dir is removed on close


def test_execpropstest_precedence(corpus):
    p = load(corpus, "execpropstest")
    assert p.counts().errors == 0
    assert set(p.flows) == {"job3", "job4"}
    job2 = p.jobs["job2"]
    # the chain: moo < shared (root, sorted) < subdir/shared
    assert [link.file for link in job2.props_chain] == [
        "moo.properties",
        "shared.properties",
        "subdir/shared.properties",
    ]
    resolved = resolve_static_props(job2, {"props7": "execflow7"})
    expected = {
        "props1": "shared1",
        "props2": "job2",
        "props3": "moo3",
        "props4": "shared4",
        "props8": "shared8",
        "props7": "job7",
    }
    assert {k: resolved[k] for k in expected} == expected
    # a flow parameter does win over the chain
    assert resolve_static_props(job2, {"props1": "flow1"})["props1"] == "flow1"
    # the embedded flow: innerflow embeds flow job4, whose jobs live in subdir/
    inner = p.flows["job3"].node("innerflow")
    assert inner.embedded_flow is p.flows["job4"]
    assert p.flows["job3"].task_ids() == ["job2", "innerflow.job1", "innerflow.job4", "job3"]


@pytest.mark.parametrize("n", range(1, 8))
def test_conditionalflowtest(corpus, n):
    p = load_project(data(corpus, "conditionalflowtest") / f"conditional_flow{n}")
    assert p.counts().errors == 0
    assert len(p.flows) == 1
    flow = next(iter(p.flows.values()))
    conditions = {name: node.condition for name, node in flow.nodes.items() if node.condition}
    assert conditions, "each of these flows uses condition="
    if n == 6:
        assert conditions == {
            "jobB": "${jobA:props} == 'foo'",
            "jobC": "${jobA:props} == 'bar'",
            "jobD": "one_success && ${jobA:props} == 'foo'",
        }


# --------------------------------------------------------------------------------------------
# Flow 2.0 (EXPECTED.md: per flow nodes / flow-level props / edges; embedded as parent:child)
# --------------------------------------------------------------------------------------------

EXPECTED_2 = {
    "basicflowyamltest": {"basic_flow": (4, 1, 3)},
    "multipleflowyamltest": {"basic_flow": (4, 1, 3), "basic_flow2": (3, 1, 2)},
    "recursivedirectoryyamltest": {"basic_flow": (3, 1, 2), "basic_flow2": (4, 1, 3)},
    "embeddedflowyamltest": {
        "embedded_flow": (4, 1, 3),
        "embedded_flow:embedded_flow1": (4, 1, 3),
        "embedded_flow:embedded_flow1:embedded_flow2": (2, 1, 1),
    },
    "multipleembeddedflowyamltest": {
        "embedded_flow": (4, 1, 3),
        "embedded_flow:embedded_flow1": (4, 1, 3),
        "embedded_flow:embedded_flow1:embedded_flow2": (2, 1, 1),
        "embedded_flow_b": (4, 1, 3),
        "embedded_flow_b:embedded_flow1": (4, 1, 3),
        "embedded_flow_b:embedded_flow1:embedded_flow2": (2, 1, 1),
    },
    "noflowyamltest": {},
}


@pytest.mark.parametrize("name", sorted(EXPECTED_2))
def test_flow20_counts(corpus, name):
    p = load(corpus, name)
    assert p.flow_version == "2.0"
    assert p.counts().errors == 0
    flows = p.azkaban_flows()
    got = {fname: (f.node_count, len(f.flow_props), f.edge_count) for fname, f in flows.items()}
    assert got == EXPECTED_2[name]
    for fname in p.flows:
        assert p.flow_ok(fname)


def test_flow20_embedded_nesting_and_config_chain(corpus):
    p = load(corpus, "embeddedflowyamltest")
    flow = p.flows["embedded_flow"]
    assert "embedded_flow1.embedded_flow2.shell_pwd" in flow.task_ids()
    inner = flow.node("embedded_flow1").embedded_flow.node("embedded_flow2").embedded_flow.node("shell_pwd")
    assert inner.props == {"command": "pwd"}
    assert [link.scope for link in inner.props_chain] == [
        "embedded_flow",
        "embedded_flow:embedded_flow1",
        "embedded_flow:embedded_flow1:embedded_flow2",
    ]
    assert flow.node("embedded_flow1").embedded_flow.node("embedded_flow2").depends_on == ["shell_bash"]


def test_recursive_directories_keep_paths(corpus):
    p = load(corpus, "recursivedirectoryyamltest")
    assert p.flows["basic_flow2"].source_file == "subdirectory1/subdirectory2/basic_flow2.flow"
    assert p.resource_files == ["subdirectory1/subdirectory2/sample_script.sh"]


def test_conditionalflowyamltest(corpus):
    p = load(corpus, "conditionalflowyamltest")
    assert p.counts().errors == 0
    flow = p.flows["conditional_flow6"]
    assert (flow.node_count, len(flow.flow_props), flow.edge_count) == (4, 1, 4)
    assert {n: flow.node(n).condition for n in flow.nodes} == {
        "jobA": None,
        "jobB": "${jobA:props} == 'foo'",
        "jobC": "${jobA:props} == 'bar'",
        "jobD": "one_success && ${jobA:props} == 'foo'",
    }


def test_loadpropsflowyamltest_precedence(corpus):
    p = load(corpus, "loadpropsflowyamltest")
    assert p.counts().errors == 0
    job2 = p.flows["job3"].node("job2")
    resolved = resolve_static_props(job2, {"props7": "execflow7"})
    assert {k: resolved[k] for k in ("props1", "props2", "props3", "props4", "props8", "props7")} == {
        "props1": "shared1",
        "props2": "job2",
        "props3": "moo3",
        "props4": "shared4",
        "props8": "shared8",
        "props7": "job7",
    }


def test_invalidjobprops_xms_is_a_warning(corpus):
    p = load(corpus, "invalidjobpropsyamltest")
    assert p.counts().errors == 0
    (warning,) = [w for w in p.warnings if w.kind == Kind.JOB_PROPS]
    assert warning.file == "invalid_jobprops.flow"
    assert warning.node == "shell_pwd" and "Xms" in warning.message and "2G" in warning.message
    assert len(p.azkaban_flows()) == 1


def test_trigger_is_read(corpus):
    p = load(corpus, "flowtriggeryamltest")
    trig = p.flows["flow_trigger"].trigger
    assert trig is not None
    assert trig.cron == "0 0 1 ? * *" and trig.max_wait_mins == 5
    assert [d.name for d in trig.dependencies] == ["search-impression", "other-name"]
    assert trig.dependencies[0].params["view"] == "search_mp_versioned.search_impression_event_0_0_47"


# --------------------------------------------------------------------------------------------
# negative projects: an error naming the file and the problem
# --------------------------------------------------------------------------------------------


def _one_error(p: Project, kind: str):
    errs = errors_of(p)
    assert [e.kind for e in errs] == [kind], [str(e) for e in errs]
    return errs[0]


def test_cycle_found(corpus):
    p = load(corpus, "cyclefoundyamltest")
    err = _one_error(p, Kind.CYCLE)
    assert err.file == "cycle_found.flow" and err.flow == "cycle_found"
    assert "shell_echo -> shell_pwd -> shell_bash -> shell_echo" in err.message
    flow = p.flows["cycle_found"]
    assert (flow.node_count, len(flow.flow_props), flow.edge_count) == (4, 1, 4)
    assert not p.flow_ok("cycle_found")


def test_duplicate_node_names(corpus):
    p = load(corpus, "duplicatenodenamesyamltest")
    err = _one_error(p, Kind.DUPLICATE_NODE)
    assert err.file == "duplicate_nodename.flow" and "'shell_echo'" in err.message and err.line == 18
    assert not p.flow_ok("duplicate_nodename")


def test_dependency_undefined(corpus):
    p = load(corpus, "dependencyundefinedyamltest")
    err = _one_error(p, Kind.UNDEFINED_DEPENDENCY)
    assert err.file == "dependency_undefined.flow" and "'shell_bash'" in err.message
    assert not p.flow_ok("dependency_undefined")


def test_invalid_flow_version(corpus):
    p = load(corpus, "invalidflowversiontest")
    err = _one_error(p, Kind.FLOW_VERSION)
    assert err.file == "basic_flow.project" and "1.0" in err.message
    assert not p.flow_ok("basic_flow")


def test_no_flow_version(corpus):
    p = load(corpus, "noflowversiontest")
    err = _one_error(p, Kind.FLOW_VERSION)
    assert err.file == "no_flow_version.project" and "not specified" in err.message
    assert not p.flow_ok("basic_flow")


def test_duplicate_project_files(corpus):
    p = load(corpus, "duplicateprojectyamltest")
    err = _one_error(p, Kind.PROJECT_FILE)
    assert "basic_flow.project" in err.message and "basic_flow2.project" in err.message
    assert not p.flow_ok("basic_flow")


INVALID_CONDITIONS = {
    "job_not_exist": ("jobB", "'jobC' doesn't exist in the flow"),
    "condition_on_descendant": ("jobA", "should not define a condition on its descendant node 'jobD'"),
    "empty_operand": ("jobB", "operand is an empty string"),
    "invalid_variable_substitution": ("jobB", "cannot resolve the condition"),
    "multiple_condition_on_job_status_macros": ("jobB", "cannot combine more than one"),
}


def test_invalid_conditions(corpus):
    p = load(corpus, "invalidconditionalflowyamltest")
    errs = errors_of(p)
    assert len(errs) == 5 and len(p.azkaban_flows()) == 5
    by_flow = {e.flow: e for e in errs}
    assert set(by_flow) == set(INVALID_CONDITIONS)
    for flow, (node, text) in INVALID_CONDITIONS.items():
        err = by_flow[flow]
        assert err.kind == Kind.INVALID_CONDITION
        assert err.file == f"{flow}.flow" and err.node == node
        assert text in err.message, err.message
        assert not p.flow_ok(flow)


TRIGGER_ERRORS = {
    "flow_trigger_invalid_cron_expression": "expected 6 or 7 fields",
    "flow_trigger_second_level_cron_expression1": "seconds field",
    "flow_trigger_second_level_cron_expression2": "seconds field",
    "flow_trigger_no_max_wait_min": "maxWaitMins is required",
    "flow_trigger_zero_max_wait_min": "at least 1 minute",
    "flow_trigger_no_schedule": "'schedule' is missing",
    "flow_trigger_without_dep_name": "has no name",
    "flow_trigger_without_dep_type": "has no type",
    "flow_trigger_duplicate_dep_props": "repeats the type and params",
}
TRIGGER_OK = {
    "flow_trigger": 5,
    "flow_trigger_large_max_wait_min": 14400,  # Azkaban clamps to 10 days (a warning here)
    "flow_trigger_no_max_wait_min_zero_dep": None,
    "flow_trigger_max_wait_min_zero_dep": 5,
}


def test_flow_triggers(corpus):
    p = load(corpus, "flowtriggeryamltest")
    assert set(p.flows) == set(TRIGGER_ERRORS) | set(TRIGGER_OK)
    for flow, text in TRIGGER_ERRORS.items():
        errs = [e for e in p.flow_problems(flow) if e.is_error and e.kind == Kind.INVALID_TRIGGER]
        assert errs, flow
        assert all(e.file == f"{flow}.flow" for e in errs)
        assert any(text in e.message for e in errs), [e.message for e in errs]
        assert not p.flow_ok(flow)
    for flow, wait in TRIGGER_OK.items():
        assert p.flow_ok(flow), [str(e) for e in p.flow_problems(flow)]
        assert p.flows[flow].trigger.max_wait_mins == wait
    (clamped,) = p.flow_problems("flow_trigger_large_max_wait_min")
    assert clamped.severity == "warning" and "clamped" in clamped.message


# --------------------------------------------------------------------------------------------
# every other project of the corpus loads without errors; zips read like directories
# --------------------------------------------------------------------------------------------

VALID_OTHERS = [
    "alertflow",
    "animal",
    "basicflowwithoutendnode",
    "basicyamlshelltest",
    "embedded2",
    "embedded3",
    "embedded4",
    "embeddedflowwithoutendnode",
    "exectest2",
    "failbasicflowwithoutendnode",
]
NEGATIVE = [
    "cyclefoundyamltest",
    "dependencyundefinedyamltest",
    "duplicatenodenamesyamltest",
    "duplicateprojectyamltest",
    "embedded_bad",
    "flowtriggeryamltest",
    "invalidconditionalflowyamltest",
    "invalidflowversiontest",
    "noflowversiontest",
]
COVERED_ELSEWHERE = [
    "conditionalflowtest",
    "conditionalflowyamltest",
    "execpropstest",
    "exectest1",
    "embedded",
    "invalidjobpropsyamltest",
    "loadpropsflowyamltest",
    "massive-flows",
]


def test_every_corpus_project_is_covered(corpus):
    on_disk = {d.name for d in (corpus / "execution-test-data").iterdir() if d.is_dir()}
    covered = set(VALID_OTHERS) | set(NEGATIVE) | set(COVERED_ELSEWHERE) | set(EXPECTED_2)
    assert on_disk == covered


@pytest.mark.parametrize("name", VALID_OTHERS)
def test_valid_projects_load_cleanly(corpus, name):
    p = load(corpus, name)
    assert p.errors == [], [str(e) for e in p.errors]
    assert p.flows
    for flow in p.flows.values():
        order = flow.topological_order()
        assert sorted(order) == sorted(flow.nodes)


@pytest.mark.parametrize("name", NEGATIVE)
def test_negative_projects_name_file_and_problem(corpus, name):
    p = load(corpus, name)
    assert p.errors
    files = set(p.flow_files) | set(p.project_files) | {j.source_file for j in p.jobs.values()}
    for err in p.errors:
        assert err.file in files, str(err)
        assert err.message and str(err).startswith(err.file)


def test_zip_matches_directory(corpus):
    with load_project(data(corpus, "basicflowyamltest") / "Archive.zip") as z:
        d = load(corpus, "basicflowyamltest")
        assert z.counts() == d.counts()
        assert z.resource_files == ["sample_script.sh"]
        zf, df = z.flows["basic_flow"], d.flows["basic_flow"]
        assert {n: (x.type, x.props, x.depends_on) for n, x in zf.nodes.items()} == {
            n: (x.type, x.props, x.depends_on) for n, x in df.nodes.items()
        }


def test_example_zips(corpus):
    examples = corpus / "examples"
    with load_project(examples / "conditional-flow" / "conditionalFlowProject.zip") as p:
        assert p.errors == []
        assert p.resource_files == ["write_to_props.sh"]  # __MACOSX/ ignored
        flow = p.flows["sample"]
        assert flow.node("JobB").condition == "${JobA:param1} == 1"
        assert flow.node("JobD").condition == "one_success"
        assert (p.root / "write_to_props.sh").is_file()
    with load_project(examples / "flow20-projects" / "embeddedFlow20Project.zip") as p:
        assert p.errors == []
        assert {k: (f.node_count, f.edge_count) for k, f in p.azkaban_flows().items()} == {
            "embedded": (2, 1),
            "embedded:embedded_flow": (2, 1),
        }
        assert p.flows["embedded"].flow_props == {"failure.emails": "noreply@foo.com"}


def test_corpus_is_never_written(corpus, tmp_path):
    """Loading reads in place: nothing is created inside the (read-only) corpus."""
    before = sorted(str(x) for x in corpus.rglob("*"))
    load(corpus, "exectest1")
    with load_project(data(corpus, "basicflowyamltest") / "Archive.zip"):
        pass
    assert sorted(str(x) for x in corpus.rglob("*")) == before
    shutil.rmtree(tmp_path, ignore_errors=True)
