"""Where training text comes from: local .txt/.jsonl/.parquet files read through 🤗 datasets, their one-line
errors, and the streamed BookCorpus offline."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from hsrl.data.text_sources import BookCorpusPairs, load_documents, read_text_file


def test_txt_blank_lines_end_documents_and_prose_lines_are_split(tmp_path: Path) -> None:
    path = tmp_path / "a.txt"
    path.write_text("One. Two here.\nThree.\n\n\nFour.\nFive.\n", encoding="utf-8")
    docs = read_text_file(path)
    assert [d.sentences for d in docs] == [["One.", "Two here.", "Three."], ["Four.", "Five."]]


def test_every_format_gives_the_same_documents(tmp_path: Path) -> None:
    records = [
        {"text": "A first. A second.", "doc": "x"},
        {"text": "A third.", "doc": "x"},
        {"text": "B one. B two.", "doc": "y"},
    ]
    (tmp_path / "d.jsonl").write_text("\n".join(json.dumps(r) for r in records), encoding="utf-8")
    pq.write_table(pa.Table.from_pylist(records), tmp_path / "d.parquet")
    (tmp_path / "d.txt.gz").write_bytes(gzip.compress(b"A first. A second.\nA third.\n\nB one. B two.\n"))
    expected = [["A first.", "A second.", "A third."], ["B one.", "B two."]]
    for name in ("d.jsonl", "d.parquet", "d.txt.gz"):
        assert [d.sentences for d in read_text_file(tmp_path / name)] == expected, name
    train, heldout = load_documents(str(tmp_path))  # a folder: every file; the last document is held out
    assert sum(len(d.sentences) for d in train + heldout) == 3 * 5
    assert heldout == [train[-1].__class__("d.txt/00001", ["B one.", "B two."])]


@pytest.mark.parametrize(
    "content, message",
    [
        (b"", "empty"),
        (b"Only one sentence here.\n", "two or more sentences"),
        (b"caf\xe9 au lait. Another one.\n", "not UTF-8"),
    ],
)
def test_bad_files_fail_with_one_clear_line(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "bad.txt"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=message) as info:
        load_documents(str(path))
    assert "\n" not in str(info.value)


def test_local_files_go_through_datasets_and_leave_the_folder_alone(tmp_path: Path) -> None:
    from hsrl.data.text_sources import _documents_through_datasets

    (tmp_path / "a.txt").write_text("One. Two.\n\nThree.\nFour.\n", encoding="utf-8")
    (tmp_path / "a.jsonl").write_text('{"text": "One. Two.", "document": 7}\n\n{"text": "Three."}\n')
    expected = {"a.txt": [["One.", "Two."], ["Three.", "Four."]], "a.jsonl": [["One.", "Two."], ["Three."]]}
    for name, sentences in expected.items():
        direct = _documents_through_datasets(tmp_path / name, Path(name).suffix)
        assert [d.sentences for d in direct] == sentences == [d.sentences for d in read_text_file(tmp_path / name)]
    assert [d.id for d in read_text_file(tmp_path / "a.jsonl")] == ["a/7", "a/0"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.jsonl", "a.txt"]  # no cache beside the data
    (tmp_path / "b.jsonl").write_text('{"text": "ok"}\n{not json\n')
    with pytest.raises(ValueError, match="line 2 is not valid JSON"):  # the line reader names the line
        read_text_file(tmp_path / "b.jsonl")


def test_missing_dataset_and_unknown_type(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no such file"):
        load_documents(str(tmp_path / "nope.txt"))
    (tmp_path / "x.csv").write_text("a,b")
    with pytest.raises(ValueError, match="unsupported file type"):
        load_documents(str(tmp_path / "x.csv"))


def test_bookcorpus_offline_fails_at_once_with_what_to_do_instead() -> None:
    with pytest.raises(ValueError, match="--dataset austen") as info:
        BookCorpusPairs()
    assert "\n" not in str(info.value)
