"""Loading, shape detection, the column mapping, and every kind of bad row."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from finetune.config import DataConfig
from finetune.data import DataError, detect_shape, format_dataset, load_rows, write_jsonl


def jsonl(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


SHAPES = {
    "alpaca": ({"instruction": "Add", "input": "2 and 2", "output": "4"},
               [{"role": "user", "content": "Add\n\n2 and 2"}, {"role": "assistant", "content": "4"}]),
    "prompt_completion": ({"prompt": "P", "completion": "C"},
                          [{"role": "user", "content": "P"}, {"role": "assistant", "content": "C"}]),
    "question_answer": ({"question": "Q", "answer": "A"},
                        [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}]),
    "messages": ({"messages": [{"role": "system", "content": "S"}, {"role": "user", "content": "U"},
                               {"role": "assistant", "content": "A"}]},
                 [{"role": "system", "content": "S"}, {"role": "user", "content": "U"}, {"role": "assistant", "content": "A"}]),
    "conversations": ({"conversations": [{"from": "human", "value": "U"}, {"from": "gpt", "value": "A"}]},
                      [{"role": "user", "content": "U"}, {"role": "assistant", "content": "A"}]),
    "transcript": ({"text": "### Human: Hi there### Assistant: Hello! How can I help?### Human: Bye### Assistant: Bye!"},
                   [{"role": "user", "content": "Hi there"}, {"role": "assistant", "content": "Hello! How can I help?"},
                    {"role": "user", "content": "Bye"}, {"role": "assistant", "content": "Bye!"}]),
}


@pytest.mark.parametrize("shape", SHAPES)
def test_every_shape_is_detected_and_formatted(tmp_path, shape):
    row, messages = SHAPES[shape]
    result = format_dataset(jsonl(tmp_path / "d.jsonl", [row]), DataConfig(template="llama2"))
    assert result.shape.name == shape
    [ex] = result.examples
    assert ex.messages == messages
    from finetune.templates import render

    assert ex.text == render(messages, "llama2").text


def test_preformatted_text_passes_through(tmp_path):
    text = "<s>[INST] already formatted [/INST] yes </s>"
    result = format_dataset(jsonl(tmp_path / "d.jsonl", [{"text": text}]), DataConfig(template="llama2"))
    assert result.shape.name == "text"
    [ex] = result.examples
    assert ex.text == text and ex.spans == [(0, len(text))] and ex.messages is None
    assert not result.warnings  # control strings are expected in pre-formatted text


def test_guanaco_transcript_like_the_classic_tutorial(tmp_path):
    row = {"text": "### Human: Can you write a short introduction?### Assistant: Sure! Here it is."}
    [ex] = format_dataset(jsonl(tmp_path / "g.jsonl", [row]), DataConfig(template="llama2")).examples
    assert ex.text == "<s>[INST] Can you write a short introduction? [/INST] Sure! Here it is. </s>"


FILE_ROWS = [{"instruction": "Say hi", "output": "Hi"}, {"instruction": "Say bye", "output": "Bye"}]


def write_all_types(tmp_path: Path) -> dict[str, Path]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    out = {
        "csv": tmp_path / "d.csv", "tsv": tmp_path / "d.tsv", "json_array": tmp_path / "a.json",
        "json_columns": tmp_path / "c.json", "jsonl": tmp_path / "d.jsonl", "parquet": tmp_path / "d.parquet",
    }
    out["csv"].write_text('instruction,output\n"Say hi",Hi\nSay bye,Bye\n')
    out["tsv"].write_text("instruction\toutput\nSay hi\tHi\nSay bye\tBye\n")
    out["json_array"].write_text(json.dumps(FILE_ROWS))
    out["json_columns"].write_text(json.dumps({"instruction": ["Say hi", "Say bye"], "output": ["Hi", "Bye"]}))
    jsonl(out["jsonl"], FILE_ROWS)
    pq.write_table(pa.Table.from_pylist(FILE_ROWS), out["parquet"])
    return out


def test_every_file_type_loads_the_same_rows(tmp_path):
    for kind, path in write_all_types(tmp_path).items():
        result = format_dataset(path, DataConfig(template="chatml"))
        assert result.shape.name == "alpaca", kind
        assert [ex.messages[0]["content"] for ex in result.examples] == ["Say hi", "Say bye"], kind


def test_column_mapping_override(tmp_path):
    rows = [{"q_text": "Q1", "reply": "R1", "notes": "x"}]
    path = jsonl(tmp_path / "m.jsonl", rows)
    with pytest.raises(DataError, match=r"cannot tell the data's shape .*q_text, reply, notes.*--columns"):
        format_dataset(path, DataConfig(template="llama2"))
    result = format_dataset(path, DataConfig(template="llama2", columns={"instruction": "q_text", "output": "reply"}))
    assert result.shape.name == "alpaca"
    assert result.examples[0].messages == [{"role": "user", "content": "Q1"}, {"role": "assistant", "content": "R1"}]
    # the mapping wins over detection even when other shapes' columns exist
    both = jsonl(tmp_path / "b.jsonl", [{"prompt": "P", "completion": "C", "question": "Q", "answer": "A"}])
    qa = DataConfig(template="llama2", columns={"question": "question", "answer": "answer"})
    assert format_dataset(both, qa).shape.name == "question_answer"
    with pytest.raises(DataError, match="column 'nope'"):
        format_dataset(path, DataConfig(template="llama2", columns={"output": "nope", "instruction": "q_text"}))


def test_system_prompt_added_where_missing(tmp_path):
    path = jsonl(tmp_path / "d.jsonl", [SHAPES["prompt_completion"][0], SHAPES["messages"][0]])
    result = format_dataset(path, DataConfig(template="llama2", system_prompt="Default sys",
                                             columns={"messages": "messages"}))
    # only the messages row is of that shape; rows of another shape are skipped with a reason
    assert result.examples[0].messages[0] == {"role": "system", "content": "S"}
    result = format_dataset(jsonl(tmp_path / "e.jsonl", [{"prompt": "P", "completion": "C"}]),
                            DataConfig(template="llama2", system_prompt="Sys"))
    assert result.examples[0].text.startswith("<s>[INST] <<SYS>>\nSys\n<</SYS>>")


# -- bad input: the whole file ------------------------------------------------------------------

def test_empty_file(tmp_path):
    (tmp_path / "e.csv").write_bytes(b"")
    with pytest.raises(DataError, match=r"e\.csv: the file is empty"):
        format_dataset(tmp_path / "e.csv", DataConfig(template="llama2"))


def test_wrong_encoding_names_the_row(tmp_path):
    p = tmp_path / "latin.csv"
    p.write_bytes("instruction,output\nhi,ok\ncaf\xe9,ok\n".encode("latin-1"))
    with pytest.raises(DataError) as err:
        format_dataset(p, DataConfig(template="llama2"))
    # CSV rows are data rows (the header is not one); the line is named too
    assert str(err.value).startswith(f"{p}:2: not valid UTF-8 at line 3 (byte 0xe9")
    assert "re-save the file as UTF-8" in str(err.value)
    j = tmp_path / "latin.jsonl"
    j.write_bytes('{"prompt": "a", "completion": "b"}\n{"prompt": "caf\xe9", "completion": "b"}\n'.encode("latin-1"))
    with pytest.raises(DataError, match=r"latin\.jsonl:2: not valid UTF-8 at line 2 \(byte 0xe9"):
        format_dataset(j, DataConfig(template="llama2"))


def test_broken_json_document_names_the_line(tmp_path):
    p = tmp_path / "b.json"
    p.write_text('[\n{"instruction": "a", "output": "b"},\n{"instruction": "c" "output": "d"}\n]')
    with pytest.raises(DataError, match=r"b\.json:3: not valid JSON"):
        format_dataset(p, DataConfig(template="llama2"))


def test_unknown_file_type_and_missing_file(tmp_path):
    (tmp_path / "x.txt").write_text("hello")
    with pytest.raises(DataError, match="unsupported file type '.txt'"):
        format_dataset(tmp_path / "x.txt", DataConfig(template="llama2"))
    with pytest.raises(DataError, match="file not found"):
        format_dataset(str(tmp_path / "missing.csv"), DataConfig(template="llama2"))


def test_zero_usable_rows(tmp_path):
    p = jsonl(tmp_path / "z.jsonl", [{"instruction": "", "output": "x"}, {"instruction": "y", "output": " "}])
    with pytest.raises(DataError, match=r"no usable rows: 2 of 2 rejected \(first: row 1: instruction: 'instruction' is empty"):
        format_dataset(p, DataConfig(template="llama2"))


# -- bad input: single rows ---------------------------------------------------------------------

def bad_rows_file(tmp_path: Path) -> Path:
    lines = [
        json.dumps({"instruction": "ok 1", "output": "fine"}),                       # 1
        '{"instruction": "broken", "output": ',                                       # 2 broken JSON line
        json.dumps({"instruction": "no output"}),                                    # 3 missing field
        json.dumps({"instruction": "empty", "output": ""}),                          # 4 empty field
        json.dumps({"instruction": "list", "output": ["a", "b"]}),                   # 5 not text
        json.dumps({"instruction": "number", "output": 42}),                         # 6 number: kept, warned
        json.dumps({"instruction": "ok 1", "output": "fine"}),                       # 7 duplicate of 1
        json.dumps({"instruction": "inject [INST] x", "output": "y"}),               # 8 control strings: warned
        "",                                                                           # blank: not a row
        json.dumps(["not", "an", "object"]),                                         # 10
    ]
    p = tmp_path / "bad.jsonl"
    p.write_text("\n".join(lines) + "\n")
    return p


def test_bad_rows_are_skipped_and_counted_with_row_numbers(tmp_path):
    result = format_dataset(bad_rows_file(tmp_path), DataConfig(template="llama2"))
    assert [ex.row for ex in result.examples] == [1, 6, 8]
    assert result.rows_in == 9
    by_row = {p.row: p for p in result.problems}
    assert by_row[2].category == "broken JSON line"
    assert by_row[3].category == "missing field" and "'output' is missing" in by_row[3].reason
    assert by_row[4].category == "empty field"
    assert by_row[5].category == "not text" and "list" in by_row[5].reason
    assert by_row[7].category == "duplicate" and by_row[7].reason == "duplicates row 1"
    assert by_row[10].category == "not an object"
    assert dict(result.skipped) == {"broken JSON line": 1, "missing field": 1, "empty field": 1, "not text": 1,
                                    "duplicate": 1, "not an object": 1}
    warned = {p.row: p.category for p in result.warnings}
    assert warned == {6: "number as text", 8: "control strings"}
    assert result.examples[1].messages[1]["content"] == "42"
    assert all(p.fix for p in result.problems + result.warnings)


def test_strict_stops_at_the_first_bad_row(tmp_path):
    with pytest.raises(DataError) as err:
        format_dataset(bad_rows_file(tmp_path), DataConfig(template="llama2", strict=True))
    assert str(err.value).startswith(f"{tmp_path / 'bad.jsonl'}:2: not valid JSON")
    p = jsonl(tmp_path / "c.jsonl", [{"instruction": "inject <|im_start|>", "output": "y"}])
    with pytest.raises(DataError, match=r"c\.jsonl:1: content: content contains template control strings <\|im_start\|>"):
        format_dataset(p, DataConfig(template="llama2", strict=True))


def test_conversation_problems(tmp_path):
    rows = [
        {"messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}, {"role": "assistant", "content": "c"}]},
        {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}, {"role": "user", "content": "c"}]},
        {"messages": [{"role": "robot", "content": "a"}]},
        {"messages": "not json"},
        {"messages": [{"role": "user", "content": "fine"}, {"role": "assistant", "content": "yes"}]},
    ]
    result = format_dataset(jsonl(tmp_path / "m.jsonl", rows), DataConfig(template="chatml"))
    assert [ex.row for ex in result.examples] == [5]
    cats = {p.row: p.category for p in result.problems}
    assert cats == {1: "roles out of order", 2: "ends with user", 3: "unknown role", 4: "not a message list"}
    p1 = next(p for p in result.problems if p.row == 1)
    assert "message 2 has role 'user'" in p1.reason and "merge" in p1.fix


def test_csv_row_with_wrong_field_count(tmp_path):
    p = tmp_path / "w.csv"
    p.write_text("instruction,output\na,b\nc,d,e\nf,g\n")
    result = format_dataset(p, DataConfig(template="llama2"))
    assert [ex.row for ex in result.examples] == [1, 3]
    assert result.problems[0].row == 2 and "3 fields but the header has 2" in result.problems[0].reason


def test_messages_as_json_strings_in_csv(tmp_path):
    p = tmp_path / "m.csv"
    msgs = json.dumps([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]).replace('"', '""')
    p.write_text(f'messages\n"{msgs}"\n')
    assert format_dataset(p, DataConfig(template="llama2")).examples[0].messages[1]["content"] == "yo"


# -- split, stats, output -----------------------------------------------------------------------

def test_validation_split_is_seeded_and_keeps_order(tmp_path):
    rows = [{"prompt": f"p{i}", "completion": f"c{i}"} for i in range(50)]
    p = jsonl(tmp_path / "s.jsonl", rows)
    r1 = format_dataset(p, DataConfig(template="llama2", val_fraction=0.2, seed=1))
    r2 = format_dataset(p, DataConfig(template="llama2", val_fraction=0.2, seed=1))
    r3 = format_dataset(p, DataConfig(template="llama2", val_fraction=0.2, seed=2))
    assert len(r1.val_examples) == 10 and len(r1.examples) == 40
    assert [e.row for e in r1.val_examples] == [e.row for e in r2.val_examples] != [e.row for e in r3.val_examples]
    assert [e.row for e in r1.examples] == sorted(e.row for e in r1.examples)
    assert sorted(e.row for e in r1.examples + r1.val_examples) == list(range(1, 51))


def test_token_stats_with_the_models_tokenizer(tmp_path, smollm2_tokenizer):
    rows = [{"prompt": "word " * n, "completion": "ok"} for n in (1, 5, 50, 200)]
    result = format_dataset(jsonl(tmp_path / "t.jsonl", rows), DataConfig(template="chatml"),
                            tokenizer=smollm2_tokenizer, max_length=64)
    stats = result.token_stats
    expected = sorted(len(smollm2_tokenizer(ex.text, add_special_tokens=False)["input_ids"]) for ex in result.examples)
    assert (stats["min"], stats["max"]) == (expected[0], expected[-1])
    assert stats["over_max_length"] == sum(1 for x in expected if x > 64) == 1


def test_write_jsonl_keys_and_order(tmp_path):
    result = format_dataset(write_all_types(tmp_path)["jsonl"], DataConfig(template="llama2"))
    out = tmp_path / "out.jsonl"
    write_jsonl(result.examples, out)
    objs = [json.loads(line) for line in out.read_text().splitlines()]
    assert [set(o) for o in objs] == [{"text", "prompt", "completion", "messages"}] * 2
    assert [o["messages"][0]["content"] for o in objs] == ["Say hi", "Say bye"]
    assert all(o["text"] == o["prompt"] + o["completion"] for o in objs)


def test_detect_shape_rejects_unknown_mapping_field():
    with pytest.raises(DataError, match="unknown field 'answr'"):
        detect_shape(["a", "b"], {"answr": "a"})


def test_hub_id_goes_through_datasets(monkeypatch):
    import datasets

    calls = {}

    class Fake:
        column_names = ["question", "answer"]

        def to_list(self):
            return [{"question": "Q", "answer": "A"}]

    def fake_load(name, config, split):
        calls.update(name=name, config=config, split=split)
        return Fake()

    monkeypatch.setattr(datasets, "load_dataset", fake_load)
    table = load_rows("someone/some-data", hub_config="en", split="test")
    assert calls == {"name": "someone/some-data", "config": "en", "split": "test"}
    assert table.rows == [{"question": "Q", "answer": "A"}]


def test_a_hub_read_that_fails_says_why_but_a_bug_there_stays_a_bug(monkeypatch):
    import datasets

    def offline(name, config, split):
        raise ConnectionError("no route to huggingface.co")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(DataError, match="cannot load the Hub dataset .no route to huggingface.co"):
        load_rows("someone/some-data")

    def broken(name, config, split):  # a mistake in a call, ours or the library's: not the user's to fix
        raise TypeError("load_dataset() got an unexpected keyword argument")

    monkeypatch.setattr(datasets, "load_dataset", broken)
    with pytest.raises(TypeError, match="unexpected keyword"):
        load_rows("someone/some-data")


# -- the fast paths give exactly what the plain code gives ---------------------------------------

TRICKY = ["  padded  ", "multi\nline\ttabs", 'quotes " and \\ backslash', "unicode é 東京 🇫🇷", "x", "\u2028 sep"]


@pytest.mark.parametrize("template", ["llama2", "llama3", "chatml", "mistral", "alpaca", "falcon"])
@pytest.mark.parametrize("train_on", ["assistant", "all"])
def test_single_turn_fast_path_equals_render(tmp_path, template, train_on):
    from finetune.data.format import _single_turn_pattern
    from finetune.templates import render, special_tokens

    # the fast path exists for this template (else the comparison below would be with itself)
    tokens = special_tokens(template)
    assert _single_turn_pattern(template, tokens, False, train_on) and _single_turn_pattern(template, tokens, True, train_on)
    rows = []
    for i, (q, a) in enumerate(zip(TRICKY, reversed(TRICKY))):
        row = {"instruction": f"{q} {i}", "input": TRICKY[(i + 2) % len(TRICKY)] if i % 2 else "", "output": a}
        if i % 3 == 0:
            row["system"] = f" sys {i} {q}"
        rows.append(row)
    result = format_dataset(jsonl(tmp_path / "d.jsonl", rows),
                            DataConfig(template=template, system_prompt="Default.", train_on=train_on))
    assert [ex.row for ex in result.examples] == list(range(1, len(rows) + 1))
    for ex in result.examples:
        expected = render(ex.messages, template, train_on=train_on)
        assert (ex.text, ex.prompt, ex.completion, ex.spans) == (
            expected.text, expected.prompt, expected.completion, expected.spans)
    assert result.examples[1].messages[0] == {"role": "system", "content": "Default."}
    assert result.examples[0].messages[0]["content"] == f" sys 0 {TRICKY[0]}"


def test_write_jsonl_matches_json_dumps_byte_for_byte(tmp_path):
    rows = [{"prompt": p, "completion": c} for p, c in zip(TRICKY, reversed(TRICKY))]
    result = format_dataset(jsonl(tmp_path / "d.jsonl", rows + [{"prompt": "\x01 ctrl", "completion": "\x7f"}]),
                            DataConfig(template="llama2"))
    text_only = format_dataset([{"text": 'pre "formatted" \n text'}], DataConfig(template="llama2"))
    with_system = format_dataset([{"prompt": "q", "completion": "a", "system": "s"}], DataConfig(template="llama2"))
    multi_turn = format_dataset([{"messages": [{"role": "user", "content": "1"}, {"role": "assistant", "content": "2"},
                                               {"role": "user", "content": "3"}, {"role": "assistant", "content": "4"}]}],
                                DataConfig(template="llama2"))
    examples = result.examples + text_only.examples + with_system.examples + multi_turn.examples
    assert [len(ex.turns or ()) for ex in examples[-3:]] == [0, 6, 8]
    out = tmp_path / "o.jsonl"
    assert write_jsonl(examples, out, chunk=3) == len(examples)
    expected = "".join(json.dumps(ex.to_json(), ensure_ascii=False, separators=(",", ":")) + "\n" for ex in examples)
    assert out.read_bytes() == expected.encode("utf-8")
    assert oct(out.stat().st_mode & 0o777) == oct(0o644)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary file left


def test_jsonl_reader_numbers_rows_by_line(tmp_path):
    p = tmp_path / "d.jsonl"
    # CRLF endings, blank and whitespace-only lines, a key that first appears late, two objects on one line
    p.write_bytes(b'{"prompt": "a", "completion": "b"}\r\n\r\n   \n{"prompt": "c", "completion": "d", "system": "s"}\r\n'
                  b'{"prompt": "e", "completion": "f"} {"prompt": "g", "completion": "h"}\n')
    table = load_rows(p)
    assert table.row_numbers == [1, 4] and table.columns == ["prompt", "completion", "system"]
    assert [b.row for b in table.broken] == [5] and table.broken[0].category == "broken JSON line"
    result = format_dataset(p, DataConfig(template="chatml"))
    assert result.shape.fields.get("system") == "system"
    assert result.examples[1].messages[0] == {"role": "system", "content": "s"}


def test_csv_problems_name_the_data_row_and_the_line(tmp_path):
    p = tmp_path / "q.csv"
    # row 1 spans lines 2-3 (a quoted line break), then a blank line, row 2 on line 5, row 3 on line 6
    p.write_text('instruction,output\n"two\nlines",fine\n\nempty answer,\nok,yes\n')
    result = format_dataset(p, DataConfig(template="llama2"))
    assert [ex.row for ex in result.examples] == [1, 3]
    [problem] = result.problems
    assert (problem.row, problem.line, problem.category) == (2, 5, "empty field")
    assert str(problem).startswith("row 2 (line 5): output:")
    with pytest.raises(DataError, match=r"q\.csv:2: line 5: output: 'output' is empty"):
        format_dataset(p, DataConfig(template="llama2", strict=True))


def test_strict_reports_the_earliest_bad_row_of_any_kind(tmp_path):
    p = tmp_path / "s.jsonl"
    p.write_text('{"instruction": "a", "output": "b"}\n{"instruction": "", "output": "b"}\n{broken\n')
    with pytest.raises(DataError, match=r"s\.jsonl:2: instruction: 'instruction' is empty"):
        format_dataset(p, DataConfig(template="llama2", strict=True))
    p.write_text('{"instruction": "a", "output": "b"}\n{broken\n{"instruction": "", "output": "b"}\n')
    with pytest.raises(DataError, match=r"s\.jsonl:2: not valid JSON"):
        format_dataset(p, DataConfig(template="llama2", strict=True))
    p.write_text('{"instruction": "a", "output": "b"}\n{broken\n')
    with pytest.raises(DataError, match=r"s\.jsonl:2: not valid JSON"):
        format_dataset(p, DataConfig(template="llama2", strict=True))


def test_json_rows_wrapped_in_one_key_and_separator_hint(tmp_path):
    w = tmp_path / "w.json"
    w.write_text(json.dumps({"data": [{"question": "Q", "answer": "A"}, {"question": "Q2", "answer": "A2"}]}))
    assert [ex.row for ex in format_dataset(w, DataConfig(template="llama2")).examples] == [1, 2]
    semi = tmp_path / "semi.csv"
    semi.write_text("instruction;output\na;b\n")
    with pytest.raises(DataError, match=r"looks ';'-separated; save it with commas"):
        format_dataset(semi, DataConfig(template="llama2"))


def test_validation_split_always_leaves_training_rows():
    rows = [{"prompt": "p1", "completion": "c"}, {"prompt": "p2", "completion": "c"}]
    result = format_dataset(rows, DataConfig(template="llama2", val_fraction=0.9))
    assert (len(result.examples), len(result.val_examples)) == (1, 1)


def test_lone_surrogates_are_reported_rows_not_a_broken_file(tmp_path):
    """A JSON escape with half an emoji ("\\ud83d") decodes to a lone surrogate that UTF-8 cannot hold: its row
    is skipped with the reason, a whole emoji's escape pair is kept, and the file is written."""
    p = tmp_path / "s.jsonl"
    p.write_text('{"instruction": "cut \\ud83d emoji", "output": "x"}\n{"instruction": "ok", "output": "y"}\n'
                 '{"instruction": "whole \\ud83d\\ude00", "output": "z"}\n')
    result = format_dataset(p, DataConfig(template="llama2"))
    assert [ex.row for ex in result.examples] == [2, 3]
    assert result.examples[1].messages[0]["content"] == "whole \U0001F600"
    assert [(x.row, x.category) for x in result.problems] == [(1, "not text")]
    assert "lone UTF-16 surrogate" in result.problems[0].reason
    msgs = format_dataset([{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a \udc00"}]},
                           {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "b"}]}],
                          DataConfig(template="llama2"))
    assert [(x.row, x.category) for x in msgs.problems] == [(1, "not text")] and len(msgs.examples) == 1
    out = tmp_path / "o.jsonl"
    assert write_jsonl(result.examples, out) == 2
    assert [json.loads(line)["messages"][0]["content"] for line in out.read_text("utf-8").splitlines()] == [
        "ok", "whole \U0001F600"]
    from finetune.data import Example

    broken = Example("p", "c", ("user", "made elsewhere \ud83d", "assistant", "c"), [(1, 2)], 2)
    with pytest.raises(ValueError, match="row 2 has a broken character escape"):
        write_jsonl([broken], out)
    assert json.loads(out.read_text("utf-8").splitlines()[0])["messages"][0]["content"] == "ok"  # left as it was


def test_jsonl_values_read_exactly_as_json_reads_them(tmp_path):
    """The fast JSONL reader hands anything it would read differently to the json path: integers beyond 64 bits
    stay exact, NaN is read, a byte-order mark and CRLF endings are fine."""
    p = tmp_path / "n.jsonl"
    p.write_bytes(b'\xef\xbb\xbf{"prompt": 123456789012345678901234567890, "completion": "big"}\r\n'
                  b'{"prompt": "nan", "completion": "x", "score": NaN}\r\n')
    table = load_rows(p)
    assert table.rows == [json.loads(line) for line in p.read_bytes()[3:].decode().splitlines()][:1] + [table.rows[1]]
    assert table.rows[0]["prompt"] == 123456789012345678901234567890 and table.rows[1]["score"] != table.rows[1]["score"]
    result = format_dataset(p, DataConfig(template="llama2"))
    assert result.examples[0].messages[0]["content"] == "123456789012345678901234567890"
    plain = tmp_path / "p.jsonl"
    plain.write_bytes(b'\xef\xbb\xbf{"prompt": "a", "completion": "b"}\r\n\n{"prompt": 7, "completion": "c"}\n')
    t = load_rows(plain)
    assert t.valid_text and t.rows == [{"prompt": "a", "completion": "b"}, {"prompt": 7, "completion": "c"}]
    assert t.row_numbers == [1, 3]


def test_a_full_disk_while_writing_leaves_the_old_output_and_no_temporary_file(tmp_path, monkeypatch):
    import errno
    import os

    from finetune.data import output as data

    result = format_dataset([{"prompt": f"q{i}", "completion": f"a{i}"} for i in range(50)],
                            DataConfig(template="llama2"))
    out = tmp_path / "o.jsonl"
    out.write_text("the previous output\n")
    real_fdopen = os.fdopen

    class Full:  # the second chunk's write finds the disk full (written by the writer thread)
        def __init__(self, f):
            self.f, self.calls = f, 0

        def write(self, data):
            self.calls += 1
            if self.calls == 2:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return self.f.write(data)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

    monkeypatch.setattr(data.os, "fdopen", lambda fd, *a, **k: Full(real_fdopen(fd, *a, **k)))
    with pytest.raises(OSError) as err:
        write_jsonl(result.examples, out, chunk=10)
    assert err.value.errno == errno.ENOSPC
    assert out.read_text() == "the previous output\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o.jsonl"]
