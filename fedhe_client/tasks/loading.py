"""Which task a client runs: only what its own config names, never what a job sends."""

from __future__ import annotations

import importlib
from importlib.metadata import entry_points
from typing import Any

from fedhe_client.tasks.base import Task, TaskSetup
from fedhe_client.tasks.builtin import BUILTIN_TASK, BuiltinTask
from fedhe_common.config.models import ClientConfig, JobConfig
from fedhe_common.errors import ConfigError

ENTRY_POINT_GROUP = "fedhe.tasks"


def job_task_name(job: JobConfig) -> str:
    """The task a job asks for (the built-in task when it has no ``task:`` section)."""
    return job.task.name if job.task is not None else BUILTIN_TASK


def resolve_task(config: ClientConfig, job: JobConfig) -> Task:
    """Build this client's task and check that it is the one the job names."""
    wanted = job_task_name(job)
    if config.task is None:
        if wanted != BUILTIN_TASK:
            raise ConfigError(
                f"the job runs task {wanted!r}, but this client has no task configured "
                f"(client config 'task:'); it only runs the built-in task"
            )
        p = config.partition
        return BuiltinTask(job, p.index, p.count, p.num_samples, config.data)
    task = build_task(config.task, _setup(config, job))
    if task.name != wanted:
        raise ConfigError(
            f"the job runs task {wanted!r}, but this client's task ({config.task}) is "
            f"{task.name!r}; refusing the job"
        )
    return task


def _setup(config: ClientConfig, job: JobConfig) -> TaskSetup:
    params = dict(job.task.params) if job.task is not None else {}
    return TaskSetup(params=params, data=config.data, seed=job.job.seed, client_id=config.client_id)


def build_task(ref: str, setup: TaskSetup) -> Task:
    """Load ``module:attr`` or entry point ``ref`` (from the client config) and build it."""
    factory = _load_factory(ref)
    if isinstance(factory, type) or not isinstance(factory, Task):
        if not callable(factory):
            raise ConfigError(f"task {ref}: not a Task, a Task class or a factory")
        task = factory(setup)
    else:
        task = factory
    if not isinstance(task, Task) or not isinstance(getattr(task, "name", None), str):
        raise ConfigError(
            f"task {ref}: built a {type(task).__name__}, which lacks the Task methods "
            "(name, build_model, train_data, val_data, fit, evaluate)"
        )
    return task


def _load_factory(ref: str) -> Any:
    if ":" not in ref:
        found = entry_points(group=ENTRY_POINT_GROUP, name=ref)
        if not found:
            raise ConfigError(f"task {ref!r}: no entry point of that name in {ENTRY_POINT_GROUP}")
        return next(iter(found)).load()
    module_name, attr = ref.split(":", 1)
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"task {ref}: cannot import {module_name}: {exc}") from None
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise ConfigError(f"task {ref}: {module_name} has no attribute {attr}") from None
    return obj
