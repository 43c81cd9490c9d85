"""Where a run's time goes: parts kept on disk per process, so a resumed run still shows earlier parts."""
import json

from extract.timings import Timings, all_parts, timing_table


def test_parts_survive_a_new_session_and_every_process_is_read(tmp_path):
    first = Timings(tmp_path)
    first.record("sparsify (every session)", 600.04)
    with first.part("means (dense)"):
        pass
    # a rerun after a kill: a new process reads what the first one timed, and adds its own parts
    again = Timings(tmp_path)
    assert again.parts == {"sparsify (every session)": 600.0, "means (dense)": 0.0}
    again.record("report", 12.0)
    Timings(tmp_path, rank=1).record("quotes on sparse, with its controls", 300.0)
    parts = all_parts(tmp_path)
    assert list(parts) == ["sparsify (every session)", "means (dense)", "report", "quotes on sparse, with its controls"]
    assert json.loads((tmp_path / "timings-rank1.json").read_text()) == {"quotes on sparse, with its controls": 300.0}
    lines = timing_table(parts).splitlines()
    assert lines[1].split()[:3] == ["sparsify", "(every", "session)"] and lines[1].rstrip().endswith("65.8%")
    assert lines[-1].split() == ["total", "912.0", "s"]


def test_a_damaged_timings_file_loses_only_the_times(tmp_path):
    (tmp_path / "timings.json").write_text('{"sparsify": 1')
    timings = Timings(tmp_path)
    assert timings.parts == {} and all_parts(tmp_path) == {}
    timings.record("report", 1.0)
    assert all_parts(tmp_path) == {"report": 1.0}


def test_report_differences_name_where_two_reports_part_apart_from_times_and_rounding():
    from extract.report_diff import differences, without_times

    a = {"tasks": {"q": {"dense": {"nodes": 12, "loss": 4.099120, "prune_seconds": 3.0}}}, "time_seconds": {"x": 1}}
    b = {"tasks": {"q": {"dense": {"nodes": 12, "loss": 4.099135, "prune_seconds": 9.0}}}, "time_seconds": {"x": 2}}
    assert without_times(a) == {"tasks": {"q": {"dense": {"nodes": 12, "loss": 4.099120}}}}
    assert differences(without_times(a), without_times(b)) == []
    assert differences(without_times(a), without_times(b), rel_tol=1e-7) == ["tasks.q.dense.loss"]
    b["tasks"]["q"]["dense"]["nodes"] = 13
    assert differences(a, b) == ["tasks.q.dense.nodes", "tasks.q.dense.prune_seconds", "time_seconds.x"]
    assert differences({"l": [1, 2]}, {"l": [1]}) == ["l (length)"]
    assert differences({"a": 1}, {"b": 1}) == ["(keys)"]
