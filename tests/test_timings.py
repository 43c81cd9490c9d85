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
