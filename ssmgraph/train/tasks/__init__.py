"""Training tasks: the built-in ones are plugins like any other (hook ``ssmgraph_tasks``).

``BUILTIN_TASK_PLUGINS`` lists the modules the registry loads as built-in plugins; each has a
hookimpl ``ssmgraph_tasks()`` returning its TaskSpecs. docs/tasks.md describes every task.
"""

BUILTIN_TASK_PLUGINS: tuple[str, ...] = (
    "ssmgraph.train.tasks.synthetic",
    "ssmgraph.train.tasks.digits",
    "ssmgraph.train.tasks.text",
)
