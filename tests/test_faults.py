"""A run killed with SIGKILL in any stage and rerun ends with what an uninterrupted run leaves.

One random kill point per stage here (about 5 minutes); `python tests/faults.py --points 3` runs three
per stage, as the results in docs/reliability.md were measured.
"""
import pytest
from faults import STAGES, run_harness

pytestmark = pytest.mark.slow  # end to end: the command line, several processes or a Hub


def test_a_run_killed_in_any_stage_finishes_with_the_uninterrupted_outputs(quote_model, tiny_corpus, tmp_path):
    model_dir, task_file = quote_model
    result = run_harness(tmp_path, model_dir, tiny_corpus, task_file, points=1, seed=1)
    assert [r["stage"] for r in result["results"]] == list(STAGES)
    for r in result["results"]:
        assert r["killed"], f"{r['stage']}: the run ended before the kill at {r['delay_s']} s"
        assert r["differences"] == [], r
        assert r["reruns"] == 1, r  # the first rerun finishes: nothing left stuck
