"""lm-evaluation-harness on a chuan model dir, without `trust_remote_code`.

The model is loaded by `chuan.infer.loading.load_model` (chuan, released Baichuan, HF LLaMA and
chuan-quantized dirs alike) and handed to lm-eval's `HFLM` as a model object together with the
dir's tokenizer, so lm-eval scores exactly what chuan's own commands run. lm-eval is an optional
dependency (`pip install 'chuan[eval]'`) and is imported only here, on use.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from chuan.errors import DependencyError, InputError, MissingError
from chuan.infer.loading import load_model, load_saved_tokenizer

INSTALL_HINT = "pip install 'chuan[eval]'"


def require_lm_eval() -> None:
    """Fail with the install command when lm-evaluation-harness is missing."""
    try:
        import lm_eval  # noqa: F401
    except ImportError as err:
        raise DependencyError(
            f"lm-evaluation-harness (the `lm_eval` package) is not installed: {INSTALL_HINT}"
        ) from err


def task_manager(include_path: str | Path | None = None, *, builtin_tasks: bool = True):
    """lm-eval's task index over `include_path` and, with `builtin_tasks`, its bundled tasks.

    Indexing the ~15,000 bundled task configs takes 10-30 s, so local-only runs can skip it.
    """
    require_lm_eval()
    from lm_eval.tasks import TaskManager

    if include_path is not None and not Path(include_path).is_dir():
        raise MissingError(f"--include-path {include_path} is not a directory")
    if include_path is None and not builtin_tasks:
        raise InputError("without lm-eval's bundled tasks, --include-path must give the tasks")
    return TaskManager(
        include_path=None if include_path is None else str(include_path),
        include_defaults=builtin_tasks,
    )


def resolve_tasks(manager, tasks: Sequence[str]) -> list[str]:
    """Task, group and tag names (glob patterns allowed), each of which must match."""
    missing = [task for task in tasks if not manager.match_tasks([task])]
    if missing:
        raise InputError(
            f"lm-eval tasks not found: {', '.join(missing)} (list them with `lm_eval ls tasks`; "
            "local YAML tasks need --include-path)"
        )
    return manager.match_tasks(list(tasks))


def run_harness(
    model_dir: str | Path,
    tasks: Sequence[str],
    *,
    include_path: str | Path | None = None,
    builtin_tasks: bool = True,
    num_fewshot: int | None = None,
    limit: float | None = None,
    batch_size: int = 1,
    device: str | None = None,
    dtype: str = "auto",
    log_samples: bool = False,
) -> dict[str, Any]:
    """Run lm-eval `tasks` on a model dir; returns lm-eval's results dict.

    `limit` is lm-eval's: documents per task, or a fraction when below 1. With `log_samples`
    the dict keeps `samples` (per-document requests and responses, e.g. every choice's
    loglikelihood).
    """
    manager = task_manager(include_path, builtin_tasks=builtin_tasks)
    names = resolve_tasks(manager, tasks)
    tokenizer = load_saved_tokenizer(model_dir)
    if tokenizer is None:
        raise MissingError(f"{model_dir} has no tokenizer files, which lm-eval needs")
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM

    model = load_model(model_dir, device=device, dtype=dtype)
    lm = HFLM(pretrained=model, tokenizer=tokenizer, backend="causal", batch_size=batch_size)
    results = simple_evaluate(
        model=lm,
        tasks=names,
        num_fewshot=num_fewshot,
        limit=limit,
        task_manager=manager,
        log_samples=log_samples,
    )
    results["config"].update(model=str(model_dir), batch_size=batch_size, device=str(model.device))
    return results


def results_json(results: dict[str, Any]) -> str:
    """lm-eval's results as JSON, serialised the way lm-eval's own CLI does."""
    from lm_eval.utils import handle_non_serializable

    return json.dumps(results, indent=2, default=handle_non_serializable, ensure_ascii=False)


def results_tables(results: dict[str, Any]) -> str:
    """lm-eval's markdown table of task metrics, and of group metrics when there are groups."""
    from lm_eval.utils import make_table

    tables = [make_table(results)]
    if results.get("groups"):
        tables.append(make_table(results, "groups"))
    return "\n".join(tables)
