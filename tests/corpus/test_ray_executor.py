"""The corpus stages on Ray give what they give locally: byte for byte, for any number of
band partitions, with tasks delayed at random, with a task that fails once, after a killed
driver, and on a simulated two-node cluster."""

from __future__ import annotations

import functools
import json
import random
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import datasets
import pytest
import ray

from chuan.cli import main
from chuan.data.dedup import dedup_corpus
from chuan.data.executor import RayExecutor
from chuan.data.shards import output_records
from chuan.errors import InputError
from helpers.cli_runs import ENV
from helpers.corpus import llama_tokenizer, write_jsonl

SAMPLE = Path(__file__).resolve().parents[2] / "src" / "chuan" / "assets" / "sample"
# Report fields that say how a run went rather than what it wrote.
RUN_FIELDS = {"timing", "workers", "partitions", "seconds", "docs_per_s", "signatures"}


@pytest.fixture(scope="module", autouse=True)
def local_ray():
    """One local Ray for the module; test functions travel to its workers by value."""
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """The bundled sample over five files, with exact and edited copies of documents placed in
    other files than their originals (duplicates across shard boundaries), and junk."""
    root = tmp_path_factory.mktemp("corpus")
    docs = []
    for name in ("bible_kjv_en.jsonl", "bible_cuvs_zh.jsonl", "poetry_zh.jsonl"):
        lines = (SAMPLE / name).read_text(encoding="utf-8").splitlines()[:40]
        docs += [json.loads(line) for line in lines]
    rng = random.Random(0)
    copies = [dict(d) for d in rng.sample(docs, 12)]
    copies += [{**d, "text": d["text"].replace("the", "teh", 1)} for d in rng.sample(docs, 12)]
    copies += [{**d, "text": d["text"].replace("的", "地", 1)} for d in docs[40:50]]
    junk = [{"text": "Accept cookies\nprivacy policy\n" * 30}, {"text": "1234 " * 300}]
    everything = docs + copies + junk
    for i in range(5):
        write_jsonl(root / f"part-{i}.jsonl", everything[i::5])
    return root


def _outputs(out: Path) -> dict[str, bytes]:
    """Every file a stage wrote, by relative path: shards, rejects, markers, the report's
    content fields (run fields aside)."""
    files = {}
    for path in sorted(out.rglob("*")):
        relative = path.relative_to(out).as_posix()
        if not path.is_file() or relative.startswith("work/") or relative.endswith(".md"):
            continue
        if relative in ("report.json",):
            report = json.loads(path.read_text(encoding="utf-8"))
            files[relative] = json.dumps({k: v for k, v in report.items() if k not in RUN_FIELDS})
        elif relative.endswith((".png", "run.json")):
            continue
        else:
            files[relative] = path.read_bytes()
    return files


def _stage(args: list[str]) -> None:
    main(["data", *args])


def test_every_stage_writes_the_same_bytes_on_ray(corpus, tmp_path, test_data):
    """clean -> dedup -> quality score -> mix -> pack, each stage run locally and on Ray from
    the same input (the local run's previous output)."""
    tokenizer = llama_tokenizer(test_data, tmp_path)
    local, remote = tmp_path / "local", tmp_path / "ray"

    def both(stage: str, args: list[str], *extra: str) -> Path:
        for executor, root in (("local", local), ("ray", remote)):
            _stage([*args, "--out", str(root / stage), "--executor", executor, *extra])
        return local / stage

    clean = both("clean", ["clean", str(corpus), "--quiet"])
    dedup = both("dedup", ["dedup", str(clean / "shards")])
    records = list(output_records(dedup))
    good = write_jsonl(tmp_path / "good.jsonl", records[::2])
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"text": r["text"][::-1]} for r in records[1::2]])
    model = tmp_path / "quality-model"
    _stage(["quality", "train", "--good", str(good), "--bad", str(bad), "--out", str(model)])
    scored = both("scored", ["quality", "score", str(dedup / "shards"), "--model", str(model)])
    recipe = tmp_path / "mix.yaml"
    recipe.write_text(
        f"inputs: [{{path: {scored / 'shards'}}}]\nmethod: temperature\n"
        "temperature: 2.0\nquality_field: quality\n"
    )
    both("mixed", ["mix", "--config", str(recipe)], "budget_tokens=20000")
    both("packed", ["pack", str(local / "mixed" / "shards"), "--tokenizer", str(tokenizer),
                    "--max-length", "128"])  # fmt: skip
    for stage in ("clean", "dedup", "scored", "mixed"):
        ours, theirs = _outputs(local / stage), _outputs(remote / stage)
        assert ours.keys() == theirs.keys() and ours == theirs, stage
    report = json.loads((dedup / "report.json").read_text(encoding="utf-8"))
    assert report["exact_duplicates"] >= 8 and report["near_duplicates"] >= 8
    packed = [datasets.load_from_disk(str(root / "packed")).to_dict() for root in (local, remote)]
    assert packed[0] == packed[1] and packed[0]["input_ids"]
    rejects = [(root / "packed" / "rejects.jsonl").read_bytes() for root in (local, remote)]
    assert rejects[0] == rejects[1]


def _delayed(fn, seed: int, item):
    time.sleep(random.Random(f"{seed}{item!r}").uniform(0, 0.2))
    return fn(item)


class DelayingRay(RayExecutor):
    """Ray, with every task sleeping a random while first: tasks finish out of order."""

    def map(self, fn, items, desc, docs=None):
        return super().map(functools.partial(_delayed, fn, 1), items, desc, docs)


def test_dedup_is_the_same_for_any_partitions_and_task_order(corpus, tmp_path):
    reference = tmp_path / "local"
    dedup_corpus(corpus, reference, workers=1, progress=False)
    expected = _outputs(reference)
    for partitions in (1, 3, 7):
        out = tmp_path / f"ray-{partitions}"
        executor = DelayingRay(None, progress=False)
        report = dedup_corpus(corpus, out, executor=executor, partitions=partitions,
                              progress=False)  # fmt: skip
        assert report["partitions"] == partitions
        assert _outputs(out) == expected, partitions


def _fail_once(fn, marker: str, item):
    """Raise the first time this item is run (the marker file remembers), then run it."""
    if "part-2" in repr(item) and not Path(marker).exists():
        Path(marker).write_text("failed once", encoding="utf-8")
        raise RuntimeError("a worker fault on part-2")
    return fn(item)


class FailingOnceRay(RayExecutor):
    def __init__(self, marker: Path):
        super().__init__(None, max_retries=2, progress=False)
        self.marker = str(marker)

    def map(self, fn, items, desc, docs=None):
        return super().map(functools.partial(_fail_once, fn, self.marker), items, desc, docs)


def test_a_task_that_fails_once_is_retried(corpus, tmp_path):
    reference = tmp_path / "local"
    _stage(["clean", str(corpus), "--out", str(reference), "--quiet"])
    from chuan.data.clean import CleanConfig, clean_corpus

    marker = tmp_path / "failed"
    out = tmp_path / "ray"
    clean_corpus(corpus, out, config=CleanConfig(), executor=FailingOnceRay(marker),
                 progress=False)  # fmt: skip
    assert marker.read_text(encoding="utf-8") == "failed once"
    assert _outputs(out) == _outputs(reference)


def test_a_killed_driver_reruns_to_the_same_output_without_redoing_shards(corpus, tmp_path):
    reference = tmp_path / "local"
    dedup_corpus(corpus, reference, workers=1, progress=False)
    out = tmp_path / "ray"
    args = [sys.executable, "-m", "chuan.cli", "data", "dedup", str(corpus), "--out", str(out),
            "--executor", "ray"]  # fmt: skip
    proc = subprocess.Popen(args, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    signatures = out / "work" / "signatures"
    deadline = time.monotonic() + 120
    while not list(signatures.glob("*.done.json")) and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.kill()
    proc.wait()
    assert not (out / "report.json").exists(), "the run ended before the kill"
    finished = {p.name for p in signatures.glob("*.done.json")}
    assert finished, "no signature shard finished before the kill"
    stamps = {name: (signatures / name).stat().st_mtime_ns for name in finished}
    done = subprocess.run(args, env=ENV, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert {n: (signatures / n).stat().st_mtime_ns for n in finished} == stamps
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    assert report["signatures"]["reused"] >= len(finished)
    assert _outputs(out) == _outputs(reference)


TWO_NODES = """
import sys
from ray.cluster_utils import Cluster
import ray
from chuan.data.dedup import dedup_corpus
from chuan.data.executor import RayExecutor

cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1,
                  "include_dashboard": False})
cluster.add_node(num_cpus=1)
ray.init(address=cluster.address, log_to_driver=False)
cluster.wait_for_nodes()
executor = RayExecutor(cluster.address, progress=False)
assert len(executor._nodes()) == 2, executor._nodes()
dedup_corpus(sys.argv[1], sys.argv[2], executor=executor, partitions=3, progress=False)
ray.shutdown()
cluster.shutdown()
"""


def test_a_two_node_cluster_gives_the_local_output(corpus, tmp_path):
    reference = tmp_path / "local"
    dedup_corpus(corpus, reference, workers=1, progress=False)
    out = tmp_path / "cluster"
    script = tmp_path / "two_nodes.py"
    script.write_text(textwrap.dedent(TWO_NODES), encoding="utf-8")
    done = subprocess.run(
        [sys.executable, str(script), str(corpus), str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert _outputs(out) == _outputs(reference)


def test_a_node_that_cannot_see_the_inputs_is_named(tmp_path):
    missing = tmp_path / "not-on-this-node.jsonl"
    with pytest.raises(InputError, match=r"node .*cannot read .*not-on-this-node\.jsonl"):
        RayExecutor(None, progress=False).preflight([missing], tmp_path / "out")


def test_address_without_the_ray_executor_is_refused(corpus, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["data", "clean", str(corpus), "--out", str(tmp_path / "o"), "--address", "auto"])
    assert exit_info.value.code != 0
    assert "--executor ray" in capsys.readouterr().err + str(exit_info.value.code)
