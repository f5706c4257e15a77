"""Hardened JSON reading (ssmgraph.safeio) and the readers built on it: a damaged or tampered file
is an SsmgraphError naming the file and what is wrong, never a RecursionError or ValueError."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest

import ssmgraph
from ssmgraph.errors import SsmgraphError
from ssmgraph.merge.context import MergeError
from ssmgraph.merge.run import read_report
from ssmgraph.safeio import JSONRefused, check_fields, check_items, nesting_depth, parse_json, read_json
from ssmgraph.serialization import CheckpointError

DEEP = "[" * 100_000 + "]" * 100_000
HUGE_INT = "1" * 100_000


class FileError(SsmgraphError):
    code = "E400"


def _read(tmp_path: Path, content: str | bytes, **limits) -> str:
    path = tmp_path / "data.json"
    path.write_bytes(content.encode() if isinstance(content, str) else content)
    with pytest.raises(FileError) as info:
        read_json(path, what="cannot read the data", error=FileError, fix="write it again", **limits)
    message = str(info.value)
    assert message.startswith(f"{path}: cannot read the data (") and message.endswith("; write it again")
    return message


# ---- read_json --------------------------------------------------------------------------------------
def test_reads_plain_json(tmp_path: Path) -> None:
    path = tmp_path / "ok.json"
    path.write_text('{"a": [1, 2.5, "x]]]]", {"b": null}], "c": true}')
    assert read_json(path, what="cannot read", error=FileError) == {"a": [1, 2.5, "x]]]]", {"b": None}], "c": True}


@pytest.mark.parametrize("text", [DEEP, '{"a": ' * 100_000 + "1" + "}" * 100_000, "[" * 101 + "]" * 101])
def test_deep_nesting_is_refused(tmp_path: Path, text: str) -> None:
    assert "nested deeper than 100 levels" in _read(tmp_path, text)


def test_depth_limit_is_exact_and_skips_strings() -> None:
    assert parse_json("[" * 100 + "]" * 100) is not None
    assert nesting_depth('["[[[[", {"a": "]]{{"}]', 10) == 2
    assert nesting_depth(r'["a\"[[[["]', 10) == 1
    assert nesting_depth(DEEP, 100) == 101  # stops counting past the limit


def test_huge_integer_is_refused(tmp_path: Path) -> None:
    assert "an integer of 100000 digits" in _read(tmp_path, f'{{"step": {HUGE_INT}}}')
    assert "an integer of 101 digits" in _read(tmp_path, "-" + "9" * 101)


@pytest.mark.parametrize(
    "text, problem",
    [("[1e999]", "1e999 overflows to infinity"), ('{"lr": NaN}', "NaN is not a finite number"), ("-Infinity", "-Infinity")],
)
def test_non_finite_numbers_are_refused_where_asked(tmp_path: Path, text: str, problem: str) -> None:
    assert problem in _read(tmp_path, text)
    (tmp_path / "loose.json").write_text(text)
    assert read_json(tmp_path / "loose.json", what="cannot read", error=FileError, finite=False) is not None


def test_too_large_not_utf8_not_json_and_missing(tmp_path: Path) -> None:
    assert "larger than the limit of 10 bytes" in _read(tmp_path, "[" + "1," * 10 + "1]", max_bytes=10)
    assert "not UTF-8 text: byte 0xff at offset 7" in _read(tmp_path, b'{"a": "\xff"}')
    assert "not valid JSON: Expecting ',' delimiter at line 1 column 4" in _read(tmp_path, "[1 2]")
    assert "not valid JSON" in _read(tmp_path, "")
    with pytest.raises(FileError, match="nothing.json: cannot read .*no such file"):
        read_json(tmp_path / "nothing.json", what="cannot read", error=FileError)
    with pytest.raises(FileError, match="is a directory"):
        read_json(tmp_path, what="cannot read", error=FileError)


def test_parse_json_raises_json_refused() -> None:
    with pytest.raises(JSONRefused, match="nested deeper than 3 levels"):
        parse_json("[[[[1]]]]", max_depth=3)
    with pytest.raises(JSONRefused, match="not valid JSON"):
        parse_json('{"step": 3, "split": "tr')


# ---- typed records ----------------------------------------------------------------------------------
SCHEMA = {"step": int, "lr": float, "name": (str, type(None)), "flag": bool}


def test_check_fields_accepts_a_fitting_record() -> None:
    record = {"step": 3, "lr": 1, "name": None, "flag": False, "other": [1]}
    assert check_fields(record, SCHEMA, source="r.json", error=FileError) is record


@pytest.mark.parametrize(
    "record, problem",
    [
        ([1, 2], "r.json: key 'cfg': expected an object, got array [1, 2]"),
        ({"lr": 1.0, "name": "a", "flag": True}, "r.json: missing key 'cfg.step'"),
        ({}, "r.json: missing keys 'cfg.step', 'cfg.lr', 'cfg.name', 'cfg.flag'"),
        ({"step": "abc", "lr": 1.0, "name": "a", "flag": True}, "r.json: key 'cfg.step': expected integer, got string 'abc'"),
        ({"step": True, "lr": 1.0, "name": "a", "flag": True}, "r.json: key 'cfg.step': expected integer, got boolean True"),
        ({"step": 1, "lr": 1.0, "name": 3, "flag": True}, "r.json: key 'cfg.name': expected string or null, got integer 3"),
        ({"step": 1, "lr": 1.0, "name": "a", "flag": 1}, "r.json: key 'cfg.flag': expected boolean, got integer 1"),
    ],
)
def test_check_fields_names_file_and_key(record: object, problem: str) -> None:
    with pytest.raises(FileError) as info:
        check_fields(record, SCHEMA, source="r.json", error=FileError, where="cfg", fix="restore it")
    assert str(info.value) == f"{problem}; restore it"


def test_check_fields_optional_keys_and_items() -> None:
    assert check_fields({}, {"tied": dict}, source="m.json", error=FileError, optional={"tied"}) == {}
    with pytest.raises(FileError, match=r"m.json: key 'tied.a': expected string, got array \[1\]"):
        check_items({"a": [1]}, str, source="m.json", error=FileError, where="tied")


# ---- meta.json of a saved model (E400) --------------------------------------------------------------
@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return ssmgraph.save(ssmgraph.build("lstm", d_model=8, layers=1, hidden=8), tmp_path_factory.mktemp("saved") / "model")


def _tampered_meta(saved: Path, tmp_path: Path, text: str) -> CheckpointError:
    directory = Path(shutil.copytree(saved, tmp_path / "model"))
    (directory / "meta.json").write_text(text)
    with pytest.raises(CheckpointError) as info:
        ssmgraph.load(directory)
    assert info.value.code == "E400" and str(directory / "meta.json") in str(info.value)
    return info.value


def test_meta_json_too_deep_or_huge(saved: Path, tmp_path: Path) -> None:
    meta = json.loads((saved / "meta.json").read_text())
    error = _tampered_meta(saved, tmp_path, json.dumps(meta)[:-1] + f', "extra": {DEEP}}}')
    assert "meta.json: unreadable (values nested deeper than 100 levels)" in str(error)
    shutil.rmtree(tmp_path / "model")
    assert "digits" in str(_tampered_meta(saved, tmp_path, json.dumps(meta)[:-1] + f', "extra": {HUGE_INT}}}'))


@pytest.mark.parametrize(
    "change, problem",
    [
        ({"tied": [1]}, "key 'tied': expected object, got array [1]"),
        ({"tied": {"head.weight": ["embed.weight"]}}, "key 'tied.head.weight': expected string, got array"),
        ({"blocks": {"mix.lstm": 3}}, "key 'blocks.mix.lstm': expected string, got integer 3"),
        ({"model": 5}, "key 'model': expected string or null, got integer 5"),
    ],
)
def test_meta_json_fields_of_the_wrong_type(saved: Path, tmp_path: Path, change: dict, problem: str) -> None:
    meta = {**json.loads((saved / "meta.json").read_text()), **change}
    assert problem in str(_tampered_meta(saved, tmp_path, json.dumps(meta)))


# ---- report.json of a merge -------------------------------------------------------------------------
def test_merge_report_that_is_too_deep_or_not_an_object(tmp_path: Path) -> None:
    (tmp_path / "report.json").write_text(DEEP)
    with pytest.raises(MergeError, match="report.json: cannot read the merge report .*nested deeper"):
        read_report(tmp_path)
    (tmp_path / "report.json").write_text("[1]")
    with pytest.raises(MergeError, match="expected an object"):
        read_report(tmp_path)
    (tmp_path / "report.json").write_text('{"metrics": {"cka": NaN}}')
    assert math.isnan(read_report(tmp_path)["metrics"]["cka"])  # reports keep what the method measured
