"""User task files: a good file loads; each kind of bad file is rejected with its file and line."""
import json

import pytest
from transformers import AutoTokenizer

from extract.paths import TOKENIZER_DIR
from extract.tasks.jsonl import TaskFileError, load_task_file


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(TOKENIZER_DIR)


def _rows(n_pairs=12):
    rows = []
    for i in range(n_pairs):
        rows.append({"prompt": f"name_{i} = 'value_{i}", "target": "'", "alternative": '"'})
        rows.append({"prompt": f'name_{i} = "value_{i}', "target": '"', "alternative": "'"})
    return rows


def _write(tmp_path, rows, raw_lines=()):
    path = tmp_path / "task.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + "".join(line + "\n" for line in raw_lines))
    return path


def test_good_file_loads(tmp_path, tokenizer):
    examples = load_task_file(_write(tmp_path, _rows()), tokenizer, max_context=256)
    assert len(examples) == 24
    single = tokenizer.convert_tokens_to_ids("'")
    assert examples[0].target_id == single and examples[1].alternative_id == single
    assert tokenizer.decode(list(examples[0].prompt_ids)) == "name_0 = 'value_0"


@pytest.mark.parametrize("bad_line, message", [
    ('{"prompt": "x = 1", "target": ', "task.jsonl:25: not valid JSON"),
    ('{"prompt": "x = 1", "target": "a"}', "task.jsonl:25: missing or non-string field(s): alternative"),
    ('{"prompt": "x", "target": "a", "alternative": "b", "weight": 2}', "task.jsonl:25: unknown field(s): weight"),
    ('{"prompt": "x", "target": " return", "alternative": " return True"}', "task.jsonl:25: target ' return' and "
                                                                            "alternative ' return True' share"),
    ('["x", "a", "b"]', "task.jsonl:25: expected a JSON object"),
])
def test_bad_line_is_named(tmp_path, tokenizer, bad_line, message):
    with pytest.raises(TaskFileError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_task_file(_write(tmp_path, _rows(), [bad_line]), tokenizer, max_context=256)


def test_prompt_longer_than_context(tmp_path, tokenizer):
    rows = _rows()
    rows[3]["prompt"] = "x = 1\n" * 200
    expected = r"task.jsonl:4: prompt is \d+ tokens, longer than the model's context of 256"
    with pytest.raises(TaskFileError, match=expected):
        load_task_file(_write(tmp_path, rows), tokenizer, max_context=256)


def test_unbalanced_and_too_small(tmp_path, tokenizer):
    rows = _rows()
    rows[1] = dict(rows[0])
    with pytest.raises(TaskFileError, match="unbalanced: 13 examples answer"):
        load_task_file(_write(tmp_path, rows), tokenizer, max_context=256)
    with pytest.raises(TaskFileError, match="4 examples; at least 20"):
        load_task_file(_write(tmp_path, _rows(2)), tokenizer, max_context=256)
    with pytest.raises(TaskFileError, match="task file not found"):
        load_task_file(tmp_path / "nope.jsonl", tokenizer, max_context=256)


def test_prompt_ending_inside_a_token_is_warned(tmp_path, tokenizer, caplog):
    # `{'key'` + `:` is read as `{'`, `key`, `':` by this tokenizer: the prompt's last token is not a
    # token of real text, so the file loads but the user is told which line to fix.
    rows = _rows()
    rows[0:2] = [{"prompt": "x = {'key'", "target": ":", "alternative": ","},
                 {"prompt": "x = ['key'", "target": ",", "alternative": ":"}]
    with caplog.at_level("WARNING", logger="extract.tasks.jsonl"):
        load_task_file(_write(tmp_path, rows), tokenizer, max_context=256)
    assert "2 of 24 prompts end inside a token (first: line 1)" in caplog.text
    caplog.clear()
    rows[0:2] = [{"prompt": "x = {'key", "target": "':", "alternative": "',"},
                 {"prompt": "x = ['key", "target": "',", "alternative": "':"}]
    with caplog.at_level("WARNING", logger="extract.tasks.jsonl"):
        load_task_file(_write(tmp_path, rows), tokenizer, max_context=256)
    assert "inside a token" not in caplog.text
