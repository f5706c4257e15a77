"""Training tasks: the built-in ones are plugins like any other (hook ``ssmgraph_tasks``).

Each module of built-in tasks is an entry point of group ``ssmgraph`` (pyproject.toml) with a
hookimpl ``ssmgraph_tasks()`` returning its TaskSpecs. docs/tasks.md describes every task.
"""
