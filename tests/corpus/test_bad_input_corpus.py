"""Issue 20 for the corpus stages (`chuan data clean | dedup | quality | mix | pack`): bad
input is never a traceback, never stale output, never a silent loss.

Every case runs the real command line in-process (`chuan.cli.main`) on tiny inputs written in
`tmp_path` and checks the exit code, the message and what is left on disk:

1. truncated, corrupt, binary and empty compressed files stop a stage with an error naming
   the file (no partial read, no empty output dir);
2. a re-run into the same `--out` with other settings or inputs is refused, naming what
   differs (`--overwrite` redoes it); the same run resumes;
3. a stage never reads its own output dir;
4. numeric flags and config fields are checked before any work;
5. a crash mid-run leaves no half-made files and never touches an earlier output.
"""

from __future__ import annotations

import gzip
import hashlib
import json
from pathlib import Path

import pytest
import zstandard

from chuan.cli import build_parser, main
from chuan.data.shards import output_records
from chuan.documents import UnreadableFileError, iter_records
from chuan.tokenizer.hf import write_tokenizer_dir
from chuan.tokenizer.spm import load_proto
from helpers.corpus import write_jsonl

SAMPLE = Path(__file__).resolve().parents[2] / "src" / "chuan" / "assets" / "sample"


def chuan(capsys, *argv) -> tuple[int, str]:
    """Run `chuan ARGV...` in-process: (exit code, everything it said). Never a traceback."""
    message = ""
    try:
        main([str(a) for a in argv])
        code = 0
    except SystemExit as stop:
        code = stop.code if isinstance(stop.code, int) else 1
        message = stop.code if isinstance(stop.code, str) else ""
    captured = capsys.readouterr()
    said = f"{captured.out}\n{captured.err}\n{message}"
    assert "Traceback" not in said, said
    return code, said


def digest(path: Path) -> dict[str, str]:
    """Every file under `path` and its hash."""
    return {
        str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(path.rglob("*"))
        if p.is_file()
    }


def report(out: Path) -> dict:
    return json.loads((out / "report.json").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory, test_data) -> Path:
    out = tmp_path_factory.mktemp("tok") / "llama"
    write_tokenizer_dir(out, load_proto(test_data / "tokenizers" / "llama" / "tokenizer.model"))
    return out


@pytest.fixture(scope="module")
def docs() -> list[dict]:
    """Forty English Bible chapters and ten exact copies (something for dedup to find)."""
    lines = (SAMPLE / "bible_kjv_en.jsonl").read_text(encoding="utf-8").splitlines()[:40]
    records = [json.loads(line) for line in lines]
    return records + records[:10]


def jsonl_bytes(records: list[dict]) -> bytes:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records).encode()


# ---------------------------------------------------------------- 1. truncated and corrupt files


def test_truncated_zst_is_an_error_naming_the_file_not_an_empty_success(tmp_path, docs, capsys):
    whole = zstandard.ZstdCompressor().compress(jsonl_bytes(docs))
    (tmp_path / "half.jsonl.zst").write_bytes(whole[: len(whole) // 2])
    code, said = chuan(capsys, "data", "clean", tmp_path / "half.jsonl.zst", "--out",
                       tmp_path / "out", "--quiet")  # fmt: skip
    assert code == 1
    assert "half.jsonl.zst: truncated or corrupt zstd data" in said
    assert "zstd -t" in said  # what to do
    assert not (tmp_path / "out").exists()  # nothing half-made left behind


def test_truncated_gz_is_an_error_not_an_eoferror_traceback(tmp_path, docs, capsys):
    whole = gzip.compress(jsonl_bytes(docs))
    (tmp_path / "half.jsonl.gz").write_bytes(whole[: len(whole) // 2])
    code, said = chuan(capsys, "data", "clean", tmp_path / "half.jsonl.gz", "--out",
                       tmp_path / "out", "--quiet")  # fmt: skip
    assert code == 1
    assert "half.jsonl.gz: truncated or corrupt gzip data" in said
    assert "gzip -t" in said
    assert not (tmp_path / "out").exists()  # no empty shards/ and rejects/


def _junk(path: Path) -> None:
    path.write_bytes(bytes(range(256)) * 8)


@pytest.mark.parametrize(
    ("name", "make", "says"),
    [
        ("junk.jsonl.gz", _junk, "corrupt gzip data"),
        ("junk.jsonl.zst", _junk, "corrupt zstd data"),
        ("empty.jsonl.gz", lambda p: p.write_bytes(b""), "empty (0 bytes)"),
        ("empty.jsonl.zst", lambda p: p.write_bytes(b""), "empty (0 bytes)"),
        ("binary.jsonl", _junk, "looks binary"),
        ("binary.txt", _junk, "looks binary"),
        ("gzipped.jsonl", lambda p: p.write_bytes(gzip.compress(b'{"text": "x"}\n')), ".gz"),
    ],
)
def test_corrupt_binary_and_empty_compressed_files_are_named_errors(
    tmp_path, capsys, name, make, says
):
    make(tmp_path / name)
    code, said = chuan(capsys, "data", "clean", tmp_path / name, "--out", tmp_path / "out",
                       "--quiet")  # fmt: skip
    assert code == 1
    assert f"{name}: " in said and says in said
    assert not (tmp_path / "out").exists()


def test_an_empty_plain_file_is_an_empty_input_not_an_error(tmp_path, capsys):
    (tmp_path / "empty.jsonl").write_bytes(b"")
    code, said = chuan(capsys, "data", "clean", tmp_path / "empty.jsonl", "--out",
                       tmp_path / "out", "--quiet")  # fmt: skip
    assert code == 0, said
    assert report(tmp_path / "out")["read"] == 0


def test_every_frame_of_a_concatenated_zst_is_read(tmp_path, docs):
    """The truncation check must not stop at the end of the first frame."""
    frame = zstandard.ZstdCompressor().compress(jsonl_bytes(docs))
    (tmp_path / "two.jsonl.zst").write_bytes(frame + frame)
    assert sum(1 for _ in iter_records(tmp_path / "two.jsonl.zst")) == 2 * len(docs)


def test_truncated_file_in_a_worker_pool_is_a_named_error(tmp_path, docs, capsys):
    write_jsonl(tmp_path / "in" / "a.jsonl", docs)
    whole = gzip.compress(jsonl_bytes(docs))
    (tmp_path / "in" / "b.jsonl.gz").write_bytes(whole[: len(whole) // 2])
    code, said = chuan(capsys, "data", "clean", tmp_path / "in", "--out", tmp_path / "out",
                       "--workers", "2", "--quiet")  # fmt: skip
    assert code == 1 and "b.jsonl.gz: truncated" in said


def test_a_redownloaded_file_resumes_the_run_it_stopped(tmp_path, docs, capsys):
    """The first input's finished shard is kept; the fixed second input is accepted (nothing
    was made from it), so fixing a download does not need --overwrite."""
    write_jsonl(tmp_path / "in" / "a.jsonl", docs)
    whole = gzip.compress(jsonl_bytes(docs))
    (tmp_path / "in" / "b.jsonl.gz").write_bytes(whole[: len(whole) // 2])
    out = tmp_path / "out"
    code, said = chuan(capsys, "data", "clean", tmp_path / "in", "--out", out, "--quiet")
    assert code == 1 and "b.jsonl.gz" in said
    first = out / "shards" / "00000-a.jsonl.zst"
    stamp = first.stat().st_mtime_ns
    (tmp_path / "in" / "b.jsonl.gz").write_bytes(whole)  # downloaded again
    code, said = chuan(capsys, "data", "clean", tmp_path / "in", "--out", out, "--quiet")
    assert code == 0, said
    assert first.stat().st_mtime_ns == stamp  # reused, not redone
    assert report(out)["read"] == 2 * len(docs)


@pytest.mark.parametrize("verb", ["dedup", "pack", "quality train"])
def test_other_stages_stop_on_a_truncated_file_too(tmp_path, docs, capsys, verb, tokenizer_dir):
    whole = gzip.compress(jsonl_bytes(docs))
    bad = tmp_path / "half.jsonl.gz"
    bad.write_bytes(whole[: len(whole) // 2])
    good = write_jsonl(tmp_path / "good.jsonl", docs)
    out = tmp_path / "out"
    argv = {
        "dedup": ["data", "dedup", good, bad, "--out", out, "--workers", "1"],
        "pack": ["data", "pack", good, bad, "--tokenizer", tokenizer_dir, "--max-length", "64",
                 "--out", out],
        "quality train": ["data", "quality", "train", "--good", good, "--bad", bad, "--out", out],
    }[verb]  # fmt: skip
    code, said = chuan(capsys, *argv)
    assert code == 1 and "half.jsonl.gz: truncated or corrupt gzip data" in said
    if verb == "dedup":  # good.jsonl's finished signatures stay, for a resume
        assert not (out / "report.json").exists() and not (out / "shards").exists()
    else:
        assert not out.exists()


def test_unreadable_file_error_survives_a_process_pool():
    import pickle

    error = pickle.loads(pickle.dumps(UnreadableFileError("a.gz", None, "truncated")))
    assert isinstance(error, UnreadableFileError) and str(error) == "a.gz: truncated"


# ---------------------------------------------------------------- 2. re-runs: resume or refuse


def test_clean_rerun_with_other_settings_is_refused_then_overwritten(tmp_path, docs, capsys):
    data = write_jsonl(tmp_path / "x.jsonl", docs)
    out = tmp_path / "o"
    assert chuan(capsys, "data", "clean", data, "--out", out, "--quiet")[0] == 0
    before = digest(out)
    code, said = chuan(capsys, "data", "clean", data, "--out", out, "--quiet",
                       "--set", "en.min_words=100000")  # fmt: skip
    assert code == 1
    assert "config.en.min_words: was 50, now 100000" in said and "--overwrite" in said
    assert digest(out) == before  # the old shard is neither reused nor touched
    code, said = chuan(capsys, "data", "clean", data, "--out", out, "--quiet",
                       "--set", "en.min_words=100000", "--overwrite")  # fmt: skip
    assert code == 0, said
    redone = report(out)
    assert redone["config"]["en"]["min_words"] == 100000
    assert redone["kept"] == 0 and redone["read"] == len(docs)


def test_clean_rerun_with_other_inputs_is_refused(tmp_path, docs, capsys):
    write_jsonl(tmp_path / "one" / "a.jsonl", docs[:20])
    write_jsonl(tmp_path / "other" / "b.jsonl", docs[20:])
    out = tmp_path / "o"
    assert chuan(capsys, "data", "clean", tmp_path / "one", "--out", out, "--quiet")[0] == 0
    before = digest(out)
    code, said = chuan(capsys, "data", "clean", tmp_path / "other", "--out", out, "--quiet")
    assert code == 1
    assert "b.jsonl is new" in said and "a.jsonl is gone" in said and "--overwrite" in said
    assert digest(out) == before  # shards/ does not mix two runs


def test_a_changed_input_is_refused_and_an_identical_rerun_resumes(tmp_path, docs, capsys):
    data = write_jsonl(tmp_path / "x.jsonl", docs)
    out = tmp_path / "o"
    assert chuan(capsys, "data", "clean", data, "--out", out, "--quiet")[0] == 0
    shard = out / "shards" / "00000-x.jsonl.zst"
    stamp = shard.stat().st_mtime_ns
    assert chuan(capsys, "data", "clean", data, "--out", out, "--quiet")[0] == 0
    assert shard.stat().st_mtime_ns == stamp  # resumed: the finished shard is reused
    write_jsonl(data, docs[:-1])
    code, said = chuan(capsys, "data", "clean", data, "--out", out, "--quiet")
    assert code == 1 and f"input {data} changed" in said


def test_a_dir_without_a_run_record_is_refused(tmp_path, docs, capsys):
    data = write_jsonl(tmp_path / "x.jsonl", docs)
    (tmp_path / "o").mkdir()
    (tmp_path / "o" / "notes.txt").write_text("mine")
    code, said = chuan(capsys, "data", "clean", data, "--out", tmp_path / "o", "--quiet")
    assert code == 1 and "no readable record of a chuan run" in said
    assert (tmp_path / "o" / "notes.txt").read_text() == "mine"


@pytest.fixture(scope="module")
def quality_model(tmp_path_factory, docs) -> Path:
    root = tmp_path_factory.mktemp("qmodel")
    good = write_jsonl(root / "good.jsonl", docs[:20])
    bad = write_jsonl(
        root / "bad.jsonl", [{"text": " ".join(sorted(d["text"].split()))} for d in docs[:20]]
    )
    main(["data", "quality", "train", "--good", str(good), "--bad", str(bad),
          "--out", str(root / "model")])  # fmt: skip
    return root / "model"


def _stage(verb: str, data: Path, out: Path, tmp: Path, quality_model, tokenizer_dir, *extra):
    """argv for one stage reading `data` (a file or dir) into `out`."""
    if verb == "clean":
        return ["data", "clean", data, "--out", out, "--quiet", *extra]
    if verb == "dedup":
        return ["data", "dedup", data, "--out", out, "--workers", "1", *extra]
    if verb == "quality score":
        return ["data", "quality", "score", data, "--model", quality_model, "--out", out, *extra]
    if verb == "mix":
        recipe = tmp / f"mix-{out.name}.yaml"
        recipe.write_text(f"inputs: [{{path: {data}}}]\nmethod: temperature\n", "utf-8")
        return ["data", "mix", "--config", recipe, "--out", out, *extra]
    return ["data", "pack", data, "--tokenizer", tokenizer_dir, "--max-length", "64",
            "--out", out, *extra]  # fmt: skip


# (verb, flags that change the output, the difference the refusal must name)
OTHER_SETTINGS = [
    ("dedup", ["--threshold", "0.7"], "threshold: was 0.8, now 0.7"),
    ("quality score", ["--field", "q2"], "field: was 'quality', now 'q2'"),
    ("mix", ["--seed", "3"], "seed: was 0, now 3"),
    ("pack", ["--bins", "2"], "bins: was 1, now 2"),
]


@pytest.mark.parametrize(("verb", "flags", "names"), OTHER_SETTINGS)
def test_every_stage_refuses_a_rerun_with_other_settings(
    tmp_path, docs, capsys, quality_model, tokenizer_dir, verb, flags, names
):
    data = write_jsonl(tmp_path / "x.jsonl", docs)
    out = tmp_path / "o"
    args = (tmp_path, quality_model, tokenizer_dir)
    code, said = chuan(capsys, *_stage(verb, data, out, *args))
    assert code == 0, said
    before = digest(out)
    code, said = chuan(capsys, *_stage(verb, data, out, *args, *flags))
    assert code == 1 and names in said and "--overwrite" in said, said
    assert digest(out) == before
    code, said = chuan(capsys, *_stage(verb, data, out, *args, *flags, "--overwrite"))
    assert code == 0, said
    assert json.loads((out / "run.json").read_text())["stage"] == verb


def test_dedup_keeps_one_record_of_its_settings(tmp_path, docs, capsys):
    """dedup's own `work/params.json` is gone: `run.json` is the one record."""
    data = write_jsonl(tmp_path / "x.jsonl", docs)
    assert chuan(capsys, "data", "dedup", data, "--out", tmp_path / "o", "--workers", "1")[0] == 0
    assert not (tmp_path / "o" / "work" / "params.json").exists()
    recorded = json.loads((tmp_path / "o" / "run.json").read_text())
    assert recorded["settings"]["num_perm"] == 128
    assert recorded["inputs"][0]["path"] == str(data.resolve())


WRITERS = [
    ["data", "clean", "x", "--out", "o"],
    ["data", "dedup", "x", "--out", "o"],
    ["data", "quality", "score", "x", "--model", "m", "--out", "o"],
    ["data", "quality", "train", "--good", "g", "--bad", "b", "--out", "o"],
    ["data", "mix", "--config", "c", "--out", "o"],
    ["data", "pack", "x", "--tokenizer", "t", "--max-length", "8", "--out", "o"],
]


@pytest.mark.parametrize("argv", WRITERS, ids=[" ".join(a[:3]) for a in WRITERS])
def test_every_data_verb_that_writes_a_dir_takes_overwrite(argv):
    assert build_parser().parse_args([*argv, "--overwrite"]).overwrite is True


# ---------------------------------------------------------------- 3. never read the output dir


@pytest.mark.parametrize("verb", ["clean", "dedup", "quality score", "mix", "pack"])
def test_a_stage_never_reads_its_own_output_dir(
    tmp_path, docs, capsys, quality_model, tokenizer_dir, verb
):
    din = tmp_path / "din"
    write_jsonl(din / "x.jsonl", docs)
    out = din / "out"
    args = (tmp_path, quality_model, tokenizer_dir)
    code, said = chuan(capsys, *_stage(verb, din, out, *args))
    assert code == 0, said
    first = digest(out)
    counted = "documents" if verb == "pack" else "read"
    read = report(out)[counted]
    # again: a resume (pack cannot resume, so it redoes the pack with --overwrite)
    again = ["--overwrite"] if verb == "pack" else []
    code, said = chuan(capsys, *_stage(verb, din, out, *args, *again))
    assert code == 0, said
    assert "it is this stage's output dir" in said
    assert report(out)[counted] == read  # its own shards, rejects and report were not read
    if verb != "pack":
        assert digest(out).keys() == first.keys()


def test_an_input_inside_the_output_dir_is_refused(tmp_path, docs, capsys):
    data = write_jsonl(tmp_path / "x.jsonl", docs)
    out = tmp_path / "o"
    assert chuan(capsys, "data", "clean", data, "--out", out, "--quiet")[0] == 0
    code, said = chuan(capsys, "data", "dedup", out / "shards", "--out", out)
    assert code == 1 and "inside the output dir" in said


def test_a_stage_output_dir_given_whole_reads_only_its_shards(tmp_path, docs, capsys):
    data = write_jsonl(tmp_path / "x.jsonl", docs)
    clean = tmp_path / "clean"
    assert chuan(capsys, "data", "clean", data, "--out", clean, "--quiet")[0] == 0
    code, said = chuan(capsys, "data", "dedup", clean, "--out", tmp_path / "d", "--workers", "1")
    assert code == 0, said
    assert "reading only" in said
    assert report(tmp_path / "d")["read"] == report(clean)["kept"]  # no rejects, no report.json


def test_a_packed_dataset_in_an_input_dir_is_not_read_as_text(
    tmp_path, docs, capsys, tokenizer_dir
):
    data = write_jsonl(tmp_path / "din" / "x.jsonl", docs)
    packed = tmp_path / "din" / "packed"
    code, said = chuan(capsys, "data", "pack", data, "--tokenizer", tokenizer_dir,
                       "--max-length", "64", "--out", packed)  # fmt: skip
    assert code == 0, said
    assert (packed / "rejects.jsonl").exists() and (packed / "report.json").exists()
    code, said = chuan(capsys, "data", "clean", tmp_path / "din", "--out", tmp_path / "c",
                       "--quiet")  # fmt: skip
    assert code == 0, said
    assert f"skipping {packed}" in said
    assert report(tmp_path / "c")["read"] == len(docs)  # not its report, run record or rejects


# ---------------------------------------------------------------- 4. flags and config fields


@pytest.mark.parametrize(
    ("argv", "flag"),
    [
        (["data", "dedup", "x", "--out", "o", "--num-perm", "0"], "--num-perm"),
        (["data", "dedup", "x", "--out", "o", "--threshold", "1.5"], "--threshold"),
        (["data", "dedup", "x", "--out", "o", "--ngram", "0"], "--ngram"),
        (["data", "dedup", "x", "--out", "o", "--bands", "0", "--rows", "2"], "--bands"),
        (["data", "dedup", "x", "--out", "o", "--rows", "-1", "--bands", "2"], "--rows"),
        (["data", "dedup", "x", "--out", "o", "--sentence-max-repeats", "-1"],
         "--sentence-max-repeats"),
        (["data", "dedup", "x", "--out", "o", "--seed", "-1"], "--seed"),
        (["data", "dedup", "x", "--out", "o", "--workers", "0"], "--workers"),
        (["data", "clean", "x", "--out", "o", "--workers", "0"], "--workers"),
        (["data", "clean", "x", "--out", "o", "--seed", "-2"], "--seed"),
        (["data", "quality", "score", "x", "--model", "m", "--out", "o", "--batch-size", "0"],
         "--batch-size"),
        (["data", "quality", "score", "x", "--model", "m", "--out", "o", "--max-length", "1"],
         "--max-length"),
        (["data", "quality", "train", "--good", "g", "--bad", "b", "--out", "o",
          "--holdout", "1"], "--holdout"),
        (["data", "quality", "train", "--good", "g", "--bad", "b", "--out", "o", "--l2", "-1"],
         "--l2"),
        (["data", "mix", "--config", "c", "--out", "o", "--workers", "0"], "--workers"),
        (["data", "pack", "x", "--tokenizer", "t", "--out", "o", "--max-length", "1"],
         "--max-length"),
        (["data", "pack", "x", "--tokenizer", "t", "--out", "o", "--max-length", "8",
          "--bins", "0"], "--bins"),
    ],
)  # fmt: skip
def test_numeric_flags_are_checked_while_parsing(tmp_path, capsys, monkeypatch, argv, flag):
    monkeypatch.chdir(tmp_path)
    code, said = chuan(capsys, *argv)
    assert code == 2
    assert f"argument {flag}" in said and ("must be" in said), said
    assert not (tmp_path / "o").exists()


def test_dedup_bands_times_rows_is_checked_before_any_work(tmp_path, docs, capsys):
    data = write_jsonl(tmp_path / "x.jsonl", docs)
    code, said = chuan(capsys, "data", "dedup", data, "--out", tmp_path / "o", "--bands", "3",
                       "--rows", "100")  # fmt: skip
    assert code == 1 and "3 bands x 100 rows = 300 exceeds the 128 permutations" in said
    assert not (tmp_path / "o").exists()  # no work/ left behind
    code, said = chuan(capsys, "data", "dedup", data, "--out", tmp_path / "o", "--bands", "3")
    assert code == 1 and "give both bands and rows" in said
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(
    ("key", "says"),
    [
        ("en.max_dup_lines=2", "en.max_dup_lines must be >= 0 and <= 1, got 2"),
        ("zh.min_chars=-5", "zh.min_chars must be >= 0, got -5"),
        ("langid.min_zh_han_share=1.5", "langid.min_zh_han_share must be >= 0 and <= 1"),
        ("generic.min_letters=-1", "generic.min_letters must be >= 0"),
    ],
)
def test_clean_config_ranges_are_checked_when_it_loads(tmp_path, docs, capsys, key, says):
    data = write_jsonl(tmp_path / "x.jsonl", docs)
    code, said = chuan(capsys, "data", "clean", data, "--out", tmp_path / "o", "--set", key)
    assert code == 1 and says in said
    assert not (tmp_path / "o").exists()


def test_mix_config_ranges_are_checked_when_it_loads(tmp_path, docs, capsys):
    data = write_jsonl(tmp_path / "x.jsonl", docs)
    recipe = tmp_path / "mix.yaml"
    recipe.write_text(f"inputs: [{{path: {data}}}]\nmethod: temperature\n", "utf-8")
    for override, says in (
        ("budget_tokens=0", "budget_tokens must be > 0"),
        ("quality_top_fraction=2", "quality_top_fraction must be > 0 and <= 1"),
        ("seed=-1", "seed must be >= 0"),
    ):
        code, said = chuan(capsys, "data", "mix", "--config", recipe, "--out", tmp_path / "o",
                           override)  # fmt: skip
        assert code == 1 and says in said, said
    assert not (tmp_path / "o").exists()


# ---------------------------------------------------------------- 5. crashes


@pytest.mark.parametrize("verb", ["quality score", "mix"])
def test_a_crash_mid_shard_leaves_nothing_half_made(
    tmp_path, docs, capsys, monkeypatch, quality_model, tokenizer_dir, verb
):
    """A fresh run that dies writing its first shard removes its temp files and its output
    dir."""
    from chuan.data.shards import JsonlZstWriter

    def crash(*args, **kwargs):
        raise RuntimeError("simulated crash")

    monkeypatch.setattr(JsonlZstWriter, "write", crash)
    data = write_jsonl(tmp_path / "x.jsonl", docs)
    out = tmp_path / "o"
    with pytest.raises(RuntimeError, match="simulated crash"):
        main([str(a) for a in _stage(verb, data, out, tmp_path, quality_model, tokenizer_dir)])
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_a_crash_in_a_resumed_run_keeps_the_earlier_output(tmp_path, docs, capsys, monkeypatch):
    import chuan.data.clean as clean

    write_jsonl(tmp_path / "in" / "a.jsonl", docs[:25])
    write_jsonl(tmp_path / "in" / "b.jsonl", docs[25:])
    out = tmp_path / "o"
    assert chuan(capsys, "data", "clean", tmp_path / "in", "--out", out, "--quiet")[0] == 0
    (out / "shards" / "00001-b.done").unlink()  # as if b's shard had not finished
    before = digest(out)

    def crash(*args, **kwargs):
        raise RuntimeError("simulated crash")

    monkeypatch.setattr(clean, "judge", crash)
    with pytest.raises(RuntimeError, match="simulated crash"):
        main(["data", "clean", str(tmp_path / "in"), "--out", str(out), "--quiet"])
    assert digest(out) == before  # b's earlier shard and the report untouched, no temp files
    monkeypatch.undo()
    assert chuan(capsys, "data", "clean", tmp_path / "in", "--out", out, "--quiet")[0] == 0
    assert sum(1 for _ in output_records(out)) == report(out)["kept"]
