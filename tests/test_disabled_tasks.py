"""Disabled tasks in real Airflow runs (``airflow dags test``): a disabled ML task ends *skipped*
(visible in the grid), downstream still runs on the skipped task's latest output, the param is
optional in the trigger form, and an unknown id fails the run at its first task naming the id and
the DAG's task ids."""

from __future__ import annotations

import textwrap

import pytest

pytestmark = [pytest.mark.airflow, pytest.mark.slow]

DAG_ID = "disabled_demo"
DAG_FILE = textwrap.dedent('''
    from datetime import datetime

    from airflow.sdk import DAG

    from airflow_ml_provider.disabled_tasks import disabled_tasks_param
    from airflow_ml_provider.operators.base import MLBaseOperator


    class Step(MLBaseOperator):
        """Reads its inputs' outputs (this run's XCom, else their latest output) and records them."""

        def __init__(self, *, inputs=(), storage_root=None, **kwargs):
            super().__init__(**kwargs)
            self.inputs = list(inputs)
            self.storage_root = storage_root

        def run(self, context):
            seen = {t: (self.upstream(context, t) or {}).get("run_id") for t in self.inputs}
            self.log.info("STEP %s of %s saw %s", self.task_id, context["run_id"], seen)
            return {"task": self.task_id, "run_id": context["run_id"], "seen": seen}


    with DAG("disabled_demo", schedule=None, start_date=datetime(2024, 1, 1), catchup=False,
             params={"disabled_tasks": disabled_tasks_param()}) as dag:
        extract = Step(task_id="extract")
        transform = Step(task_id="transform", inputs=["extract"])
        load = Step(task_id="load", inputs=["transform"])
        extract >> transform >> load
''')


@pytest.fixture
def dag_folder(tmp_path):
    dags = tmp_path / "dags"
    dags.mkdir()
    (dags / "disabled_demo.py").write_text(DAG_FILE)
    return dags


def test_disabled_task_is_skipped_and_downstream_proceeds(run_dag, dag_folder, tmp_path):
    env = {"AIRFLOW_ML_HOME": str(tmp_path / "ml")}
    first = run_dag(dag_folder, DAG_ID, env=env)
    first.assert_ok()
    assert first.states == {"extract": "success", "transform": "success", "load": "success"}, first.output[-4000:]

    second = run_dag(dag_folder, DAG_ID, conf={"disabled_tasks": ["extract"]}, env=env)
    second.assert_ok()
    # the grid shows the disabled task as skipped, not as a green success; downstream still ran
    assert second.states == {"extract": "skipped", "transform": "success", "load": "success"}, second.output[-4000:]
    assert "Task extract is disabled for this run" in second.output
    # transform read extract's latest output (from the first run), load read this run's transform
    assert f"STEP transform of {second.run_id} saw {{'extract': '{first.run_id}'}}" in second.output
    assert f"STEP load of {second.run_id} saw {{'transform': '{second.run_id}'}}" in second.output


def test_unknown_disabled_task_fails_the_run_at_its_start(run_dag, dag_folder, tmp_path):
    res = run_dag(dag_folder, DAG_ID, conf={"disabled_tasks": ["extrct"]}, env={"AIRFLOW_ML_HOME": str(tmp_path / "ml")})
    assert res.states["extract"] == "failed", res.output[-4000:]
    assert res.states["transform"] == res.states["load"] == "upstream_failed"
    assert "disabled_tasks: unknown task id 'extrct': disabled_demo has the tasks extract, load, transform" in res.output
    assert "STEP" not in res.output  # nothing ran


def test_disabled_tasks_param_is_optional_in_the_trigger_form():
    from airflow.sdk.definitions.param import ParamsDict

    from airflow_ml_provider.disabled_tasks import disabled_tasks_param

    param = disabled_tasks_param()
    # the UI marks a field required unless its schema type admits null
    assert "null" in param.schema["type"] and "array" in param.schema["type"]
    params = ParamsDict({"disabled_tasks": param})
    params["disabled_tasks"] = None  # an empty field in the form
    assert params.validate()["disabled_tasks"] is None
    params["disabled_tasks"] = ["sample"]
    assert params.validate()["disabled_tasks"] == ["sample"]
    with pytest.raises(Exception, match="disabled_tasks"):
        params["disabled_tasks"] = "sample"
