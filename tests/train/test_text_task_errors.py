"""Data the ``text`` task refuses, each with an error (E520) that names the file and, for JSON, the
line or record; and the optional packages (tokenizers, pyarrow) named with the pip command.
"""

from __future__ import annotations

import json
import sys

import pytest
from text_helpers import documents, isolated_cache, train_bpe, write_jsonl

from ssmgraph.errors import SsmgraphError
from ssmgraph.train.tasks.text import TextDataError
from ssmgraph.train.tasks.tokenized import TextTask


@pytest.fixture(autouse=True)
def cache_dir(tmp_path, monkeypatch):
    return isolated_cache(tmp_path, monkeypatch)


def refused(path, match: str, **options) -> TextDataError:
    with pytest.raises(TextDataError, match=match) as caught:
        TextTask(str(path), **{"seq_len": 4, **options})
    assert caught.value.code == "E520" and caught.value.render().startswith("error[E520]: ")
    return caught.value


def test_missing_paths_folders_without_data_and_other_files(tmp_path):
    refused(tmp_path / "nope", "no such file or directory")
    (tmp_path / "empty").mkdir()
    refused(tmp_path / "empty", r"no data files \(.txt, .md, .jsonl, .json, .parquet\)")
    (tmp_path / "only" / ".hidden").mkdir(parents=True)
    (tmp_path / "only" / ".hidden" / "a.txt").write_text("hidden text")
    (tmp_path / "only" / "image.png").write_bytes(b"\x89PNG")
    refused(tmp_path / "only", "no data files")
    refused(tmp_path / "only" / "image.png", "not a data file the text task reads")


def test_empty_and_non_utf8_text_files(tmp_path):
    (tmp_path / "a.txt").write_text("some text\n\nmore text")
    (tmp_path / "b.txt").write_text(" \n\n ")
    error = refused(tmp_path, "b.txt: empty file")
    assert "a.txt" not in str(error)
    (tmp_path / "b.txt").write_bytes(b"caf\xe9\nline two")
    refused(tmp_path, r"b.txt: not UTF-8 text \(invalid byte 0xe9 at offset 3, line 1\)")
    (tmp_path / "b.txt").write_bytes(b"nul\x00byte")
    refused(tmp_path, "b.txt: looks like a binary file")


def test_json_lines_errors_name_the_line(tmp_path):
    path = tmp_path / "d.jsonl"
    good = json.dumps({"text": "fine"})
    path.write_text(f"{good}\n\n{{broken\n")
    refused(path, r"d.jsonl:3: not a JSON object")
    path.write_text(f"{good}\n{json.dumps({'body': 'x', 'id': 2})}\n")
    refused(path, r"d.jsonl:2: no field 'text' \(its fields: 'body', 'id'\); name the text field with -t field=NAME")
    path.write_text(f"{good}\n{json.dumps({'text': 7})}\n")
    refused(path, r"d.jsonl:2: field 'text' holds int, not a string")
    path.write_text(f"{good}\n[1, 2]\n")
    refused(path, r"d.jsonl:2: expected a JSON object with a 'text' field, got list")
    path.write_bytes(good.encode() + b'\n{"text": "caf\xe9"}\n')
    refused(path, r"d.jsonl:2: not UTF-8 \(invalid byte 0xe9\)")
    path.write_text("[" * 100_000 + "\n")
    refused(path, r"d.jsonl:1: not a JSON object \(nested too deeply\)")
    path.write_text("\n\n")
    refused(path, "d.jsonl: empty file")
    path.write_text("".join(json.dumps({"text": " "}) + "\n" for _ in range(3)))
    refused(path, r"d.jsonl: no text \(every document is empty\)")


def test_json_array_errors_name_the_record(tmp_path):
    path = tmp_path / "d.json"
    path.write_text(json.dumps([{"text": "a"}, {"other": "b"}]))
    refused(path, r"d.json: record 1: no field 'text'")
    path.write_text("[1, 2")
    refused(path, r"d.json: not JSON")
    path.write_text("[]")
    refused(path, "expected a non-empty JSON array")


def test_parquet_errors_name_the_column_or_row(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    path = tmp_path / "d.parquet"
    pq.write_table(pa.table({"body": ["a", "b"]}), path)
    refused(path, r"d.parquet: no column 'text' \(its columns: 'body'\)")
    pq.write_table(pa.table({"text": [1, 2]}), path)
    refused(path, r"d.parquet: column 'text' holds int64, not strings")
    pq.write_table(pa.table({"text": ["a", None, "c"]}), path)
    refused(path, r"d.parquet: row 1: column 'text' is null")
    pq.write_table(pa.table({"text": pa.array([], type=pa.string())}), path)
    refused(path, "d.parquet: no rows")
    path.write_bytes(b"not parquet at all")
    refused(path, "d.parquet: not a readable Parquet file")


def test_parquet_without_pyarrow_says_how_to_install_it(tmp_path, monkeypatch):
    (tmp_path / "d.parquet").write_bytes(b"PAR1")
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    with pytest.raises(SsmgraphError, match=r"d.parquet: reading .parquet files needs pyarrow: pip install pyarrow"):
        TextTask(str(tmp_path / "d.parquet"))


def test_tokenizer_errors(tmp_path, monkeypatch):
    data = write_jsonl(tmp_path / "data" / "d.jsonl", documents(10))
    refused(data, "tokenizer .*nope: no such file or directory", tokenizer=str(tmp_path / "nope"))
    folder = tmp_path / "slow_tokenizer"
    folder.mkdir()
    (folder / "vocab.json").write_text("{}")
    (folder / "merges.txt").write_text("")
    refused(data, r"no tokenizer.json in this folder.*it has merges.txt, vocab.json: save the tokenizer", tokenizer=str(folder))
    (folder / "tokenizer.json").write_text("{not a tokenizer")
    refused(data, r"tokenizer.json: not a Hugging Face tokenizer file", tokenizer=str(folder))
    bpe = train_bpe(tmp_path / "bpe", vocab=270)
    refused(data, r"eod '<nope>' is not a token of", tokenizer=str(bpe), eod="<nope>")
    refused(data, r"without a tokenizer the end-of-document id is 256", eod="</s>")
    monkeypatch.setitem(sys.modules, "tokenizers", None)
    with pytest.raises(SsmgraphError, match=r"needs the tokenizers package: pip install 'ssmgraph\[text\]'"):
        TextTask(str(data), tokenizer=str(bpe))


def test_one_document_or_too_few_tokens(tmp_path):
    one = write_jsonl(tmp_path / "one.jsonl", ["a single document"])
    refused(one, "one document only; the text task holds out whole documents")
    refused(
        write_jsonl(tmp_path / "few.jsonl", documents(3, words=1)),
        r"too short for seq_len 400: 27 tokens in 3 documents give 18 for training and 9",
        seq_len=400,
    )
