"""The example DAG's human approval step on a live Airflow 3.3 (issue 12, point 3).

One LocalExecutor stack (scripts/airflow_local.py through tests/fixtures/live.py) with
``[ml] approval_on_gate_failure = True`` and a gate no model passes (``ml.<model>.min_auc = 0.99``,
from the dictionary table). Each run parks ``approve_publish`` (Airflow's ``ApprovalOperator``) in
``awaiting_input``; the test answers through the REST API as a reviewer would
(``PATCH .../taskInstances/approve_publish/-1/hitlDetails``):

* Approve: the run succeeds, ``publish`` runs and publishes version 1 although the gate failed, and
  the bundle records the approval;
* Reject: ``publish`` is skipped and the registry still holds only version 1.
"""

from __future__ import annotations

import json

import pytest

from airflow_ml_provider.ml.bundle import load_bundle
from airflow_ml_provider.ml.registry import ModelRegistry
from tests.fixtures.live import DAG_ID, MODEL, live_stack

pytestmark = [pytest.mark.live, pytest.mark.airflow, pytest.mark.slow]

GATE = {f"ml.{MODEL}.min_auc": "0.99"}  # fails for every model of the demo data
HITL = "/taskInstances/approve_publish/-1/hitlDetails"


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    with live_stack(tmp_path_factory.mktemp("approval"), dictionary=GATE, serve_port=None,
                    config={"ml": {"approval_on_gate_failure": "True"}}) as s:
        s.unpause(DAG_ID)
        yield s


def _awaiting(stack, run_id: str) -> dict:
    """Wait until the approval task waits for a human; returns its HITL detail (REST API)."""
    def parked():
        tis = stack.task_instances(DAG_ID, run_id)
        states = {t: ti["state"] for t, ti in tis.items()}
        if states.get("evaluate") == "failed" or states.get("gate_check") == "failed":
            raise AssertionError(f"run {run_id} failed before the approval step: {states}")
        return tis.get("approve_publish", {}).get("state") == "awaiting_input"

    stack.wait_for(f"approve_publish of {run_id} to await input", parked, timeout=600, interval=1.0)
    # Answer only after the scheduler has seen the pausing worker process end. Airflow 3.3.2 marks the
    # task FAILED ("finished with state success, but the task instance's state attribute is queued")
    # when an answer resumes it before that executor event is processed -- which can take several
    # seconds after the task parks; a person answering takes longer, a test must wait for it.
    event = f"Received executor event with state success for task instance TaskInstanceKey(dag_id='{DAG_ID}', " \
            f"task_id='approve_publish', run_id='{run_id}'"
    log = stack.logs / "scheduler.log"
    stack.wait_for("the scheduler to process the paused worker's exit",
                   lambda: event in log.read_text(errors="replace"), timeout=120, interval=0.5)
    r = stack.api("GET", f"/api/v2/dags/{DAG_ID}/dagRuns/{run_id}{HITL}")
    assert r.status_code == 200, r.text
    return r.json()


def _answer(stack, run_id: str, option: str) -> dict:
    r = stack.api("PATCH", f"/api/v2/dags/{DAG_ID}/dagRuns/{run_id}{HITL}",
                  json={"chosen_options": [option], "params_input": {}})
    assert r.status_code == 200, r.text
    return stack.wait_run(DAG_ID, run_id, timeout=600)


def test_approved_then_rejected(stack):
    registry = ModelRegistry(f"sqlite:///{stack.ml_home / 'registry.db'}")

    # 1. the gate fails, a human approves: published anyway
    first = stack.trigger(DAG_ID)
    detail = _awaiting(stack, first)
    assert detail["options"] == ["Approve", "Reject"]
    assert "gate" in detail["body"] and "0.99" in detail["body"], detail["body"]
    run = _answer(stack, first, "Approve")
    states = {t: ti["state"] for t, ti in stack.task_instances(DAG_ID, first).items()}
    failed = [t for t, state in states.items() if state not in ("success", "skipped")]
    assert run["state"] == "success", (states, {t: stack.task_log(DAG_ID, first, t)[-3000:] for t in failed})
    assert states == {"sample": "success", "preprocess": "success", "train": "success", "evaluate": "success",
                      "gate_check": "success", "approve_publish": "success", "publish": "success"}
    ev = stack.api("GET", f"/api/v2/dags/{DAG_ID}/dagRuns/{first}/taskInstances/evaluate/xcomEntries/return_value")
    assert ev.status_code == 200, ev.text
    value = ev.json()["value"]
    value = json.loads(value) if isinstance(value, str) else value
    assert value["gate_passed"] is False  # published although the gate failed: the human decided
    current = registry.current(MODEL)
    assert current is not None and current.version == 1 and current.run_id == first
    meta = load_bundle(current.bundle_uri).metadata
    assert meta["approval"]["chosen_options"] == ["Approve"] and meta["approval"]["task_id"] == "approve_publish"
    assert meta["gate"]["passed"] is False

    # 2. the gate fails again, a human rejects: nothing published
    second = stack.trigger(DAG_ID)
    _awaiting(stack, second)
    run = _answer(stack, second, "Reject")
    states = {t: ti["state"] for t, ti in stack.task_instances(DAG_ID, second).items()}
    assert states["approve_publish"] == "success" and states["publish"] == "skipped", (
        states, {t: stack.task_log(DAG_ID, second, t)[-3000:] for t, state in states.items() if state == "failed"})
    assert registry.versions(MODEL) == [1]
    assert registry.current(MODEL).run_id == first
