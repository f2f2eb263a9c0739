"""Tasks: a site's model, its own data, fit and evaluate (see README "Bring your own model")."""

from fedhe_client.tasks.base import ArrayData, ArrayTask, FitConfig, Task, TaskSetup
from fedhe_client.tasks.builtin import BUILTIN_TASK, BuiltinTask
from fedhe_client.tasks.loading import build_task, job_task_name, resolve_task
from fedhe_client.tasks.sitedata import load_site_data

__all__ = [
    "BUILTIN_TASK",
    "ArrayData",
    "ArrayTask",
    "BuiltinTask",
    "FitConfig",
    "Task",
    "TaskSetup",
    "build_task",
    "job_task_name",
    "load_site_data",
    "resolve_task",
]
